"""convkit.nn: layers with explicit forward/backward, losses, optimisers, schedules, state dicts.

The lecture's layer-with-cache style: each ``y = layer.forward(x)`` call keeps (on a per-layer
stack) exactly what ``grad_x = layer.backward(grad_y)`` needs; each backward consumes the latest
pending call, so a layer may be called several times before its backward (shared weights) and
its parameter gradients add up.  A backward with nothing pending raises RuntimeError.  Layers
call only the public ops of :mod:`convkit.functional` and run on the backend active at call
time; their parameters must be arrays of that backend (``model.to(backend)`` converts).

Module API (stable; the detection models build on it)
-----------------------------------------------------
``Module``                base class.  ``forward(x) -> y``; ``backward(grad_y) -> grad_x`` (adds
                          param gradients into ``grads``, torch-style accumulation; may return
                          None when no input gradient is needed); ``__call__ = forward``.
  ``params``/``grads``    dict name -> array (own trainable arrays and their gradients)
  ``buffers``             dict name -> array (non-trainable state, e.g. BN running stats)
  ``add_param(name, a)``, ``add_buffer(name, a, persistent=True)``   register arrays
  ``_push(cache)`` / ``_pop()``  a custom layer's forward pushes what its backward pops
  ``_active()``           the active Backend, after checking the module's arrays belong to it
  children                registered by attribute assignment (``self.head = Conv2d(...)``), in
                          ModuleList / ModuleDict, or in plain lists/dicts (``self.blocks = [..]``)
  ``parameters(trainable=None)``  yields (qualified name, param, grad), e.g. ("0.weight", W, dW)
  ``freeze()`` / ``unfreeze()``    stop / resume training a module's params (a backbone)
  ``named_modules()``, ``modules()``, ``children()``, ``num_parameters()``
  ``zero_grad()``, ``train(mode=True)``, ``eval()``, ``training``, ``clear_caches()``
  ``to(backend)``, ``astype(dtype)``  convert the whole model (then build the optimiser)
  ``state_dict()``        {qualified name: numpy copy} of params + buffers (torch's key names,
                          ``num_batches_tracked`` included: loads into torch strictly)
  ``load_state_dict(sd, strict=True)`` (a torch state dict works), ``save(p.npz)``, ``load``
  Arrays in params/grads/buffers are updated in place, never rebound (except by to/astype).
  Models pickle without their pending caches.
``Sequential(*layers)``   children "0", "1", ...; backward in reverse.  ``ModuleList``,
``ModuleDict``            containers without a forward.  ``no_grad()``: forwards keep no cache.

Layers (torch's argument names and weight layouts; ``dtype`` float32 default or float64;
``seed`` an int or a ``np.random.Generator``; weights drawn on the host then moved with asarray;
``init`` a name or a callable ``fn(shape, rng, dtype) -> array``):
  ``Conv2d(in_ch, out_ch, kernel_size, stride=1, padding=0, dilation=1, groups=1, bias=True,
           needs_input_grad=True, dtype, seed, init="kaiming")``  -- needs_input_grad=False: a
           first layer; backward returns None and skips grad_x
  ``ConvTranspose2d(in_ch, out_ch, kernel_size, stride=1, padding=0, output_padding=0,
           groups=1, bias=True, dilation=1, dtype, seed, init)``
  ``BatchNorm2d(num_features, eps=1e-5, momentum=0.1, affine=True, dtype)``
  ``ReLU()``, ``LeakyReLU(negative_slope=0.01)``, ``Sigmoid()``,
  ``MaxPool2d(kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False)``,
  ``AvgPool2d(kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True)``,
  ``AdaptiveAvgPool2d(output_size)``,
  ``Linear(in_features, out_features, bias=True, dtype, seed, init="kaiming")`` on (N, in),
  ``Flatten()``, ``Identity()``, ``Dropout(p=0.5, seed)``,
  ``ResidualBlock(in_ch, out_ch, stride=1, dtype, seed)`` (ResNet basic block with BN),
  ``ToFloat(dtype=float32, scale=1/255)`` and ``Normalize(mean, std, dtype)``: the explicit
  uint8 -> float step.  Any layer given integer input raises TypeError pointing at ToFloat.
Init: ``convkit.nn.init`` (kaiming_normal/uniform, xavier_uniform/normal; seeded).

Losses -> ``(loss, grad wrt the first argument)``; reduction "mean" | "sum" | "none":
  ``softmax_cross_entropy(logits[N, C], labels[N] int, reduction, ignore_index=-100)``
  ``binary_cross_entropy_with_logits(logits, targets, weight=None, reduction)``
  ``smooth_l1_loss(pred, target, beta=1.0, reduction)``, ``mse_loss(pred, target, reduction)``
  ``sigmoid_focal_loss(logits, targets, alpha=0.25, gamma=2.0, reduction)``
  ``generalized_box_iou_loss``, ``distance_box_iou_loss``, ``complete_box_iou_loss``
  ``(boxes1[N, 4], boxes2[N, 4], reduction, eps=1e-7)`` (torchvision's; grad w.r.t. boxes1)
  helpers ``sigmoid(x)``, ``log_softmax(x, axis=-1)``

Optimisers (torch's exact rules; take a Module, its ``parameters()``, or parameter groups
``[{"params": module, "lr": ..., "weight_decay": ...}, ...]``; ``step()``, ``zero_grad()``,
``lr``, ``state_dict()`` / ``load_state_dict()``, ``save`` / ``load``):
  ``SGD(params, lr, momentum=0, dampening=0, weight_decay=0, nesterov=False)``
  ``Adam(params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0)``
Schedules (``sched.step()`` after ``opt.step()``): ``StepLR(opt, step_size, gamma)``,
``CosineAnnealingLR(opt, T_max, eta_min)``, ``LinearWarmup(opt, warmup_steps, start_factor,
after=None)``.  Batches: ``BatchIterator(x, y, batch_size, shuffle=True, seed=0,
drop_last=False)``.

Example::

    model = Sequential(Conv2d(1, 6, 5, padding=2, needs_input_grad=False, seed=0), ReLU(),
                       MaxPool2d(2), Flatten(), Linear(6 * 4 * 4, 10, seed=1))
    opt = SGD(model, lr=0.05, momentum=0.9)
    logits = model.forward(x)                      # x: float32 (N, 1, 8, 8)
    loss, g = softmax_cross_entropy(logits, y)
    model.zero_grad(); model.backward(g); opt.step()
"""
from . import init
from .layers import *  # noqa: F401,F403
from .layers import __all__ as _layers_all
from .losses import *  # noqa: F401,F403
from .losses import __all__ as _losses_all
from .loader import BatchIterator
from .module import Module, ModuleDict, ModuleList, Sequential, check_float_input, no_grad
from .optim import SGD, Adam, CosineAnnealingLR, LinearWarmup, LRScheduler, Optimizer, StepLR

__all__ = ["Module", "Sequential", "ModuleList", "ModuleDict", "no_grad", "check_float_input",
           "Optimizer", "SGD", "Adam", "LRScheduler", "StepLR", "CosineAnnealingLR",
           "LinearWarmup", "BatchIterator", "init", *_layers_all, *_losses_all]
