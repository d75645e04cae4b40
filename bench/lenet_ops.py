"""LeNet5's conv and pool calls on the digits' shapes (batch 64, 8x8 and 4x4 maps), timed alone:
min over 7 repeats of 200 calls, microseconds.  Run it in two checkouts to compare commits:

    python bench/lenet_ops.py 1                               # threads
    PYTHONPATH=<other checkout> python bench/lenet_ops.py 1
"""
import timeit, numpy as np, convkit, sys
convkit.set_num_threads(int(sys.argv[1]))
rng=np.random.default_rng(0)
x1=rng.standard_normal((64,1,8,8)).astype(np.float32); w1=rng.standard_normal((6,1,5,5)).astype(np.float32); b1=np.zeros(6,np.float32)
x2=rng.standard_normal((64,6,4,4)).astype(np.float32); w2=rng.standard_normal((16,6,5,5)).astype(np.float32); b2=np.zeros(16,np.float32)
y1=convkit.conv2d_forward(x1,w1,b1,padding=2); y2=convkit.conv2d_forward(x2,w2,b2,padding=2)
xp=rng.standard_normal((64,6,8,8)).astype(np.float32)
yp,ip=convkit.max_pool2d_forward(xp,2)
tests={
 "c1 fwd": lambda: convkit.conv2d_forward(x1,w1,b1,padding=2),
 "c1 bwd": lambda: convkit.conv2d_backward(y1,x1,w1,padding=2,needs_input_grad=False),
 "c2 fwd": lambda: convkit.conv2d_forward(x2,w2,b2,padding=2),
 "c2 bwd": lambda: convkit.conv2d_backward(y2,x2,w2,padding=2),
 "mp fwd": lambda: convkit.max_pool2d_forward(xp,2),
 "mp bwd": lambda: convkit.max_pool2d_backward(yp,ip,xp.shape),
}
for k,f in tests.items():
    t=min(timeit.repeat(f,number=200,repeat=7))/200*1e6
    print(f"{k}: {t:.1f} us")
