"""convkit.nn: layers with explicit forward/backward, losses, optimisers, state dicts.

The lecture's layer-with-cache style: ``y = layer.forward(x)`` stores in ``layer._cache`` exactly
what ``grad_x = layer.backward(grad_y)`` needs.  Layers call only the public ops of
:mod:`convkit.functional` and the array module ``layer.xp`` of the backend that was active when the
layer was built (``layer.backend``); their ops always run on that backend.

Module API (stable; the detection models build on it)
-----------------------------------------------------
``Module``                base class.  ``forward(x) -> y``; ``backward(grad_y) -> grad_x`` (adds
                          param gradients into ``grads``, torch-style accumulation; may return
                          None when no input gradient is needed); ``__call__ = forward``.
  ``params``/``grads``    dict name -> array (own trainable arrays and their gradients)
  ``buffers``             dict name -> array (non-trainable state, e.g. BN running stats)
  ``add_param(name, a)``, ``add_buffer(name, a)``   register arrays in a custom Module
  ``with self._pinned():``  custom layers wrap their convkit.functional calls in it so the ops
                          run on ``self.backend`` whatever backend is active at call time
  ``_cache``              what the last forward kept for backward (a small tuple)
  children                registered by attribute assignment (``self.head = Conv2d(...)``)
  ``parameters()``        yields (qualified name, param, grad), e.g. ("0.weight", W, dW)
  ``named_modules()``, ``children()``, ``num_parameters()``
  ``zero_grad()``, ``train(mode=True)``, ``eval()``, ``training``
  ``state_dict()``        {qualified name: numpy copy} of params + buffers (torch's key names)
  ``load_state_dict(sd, strict=True)``, ``save(path.npz)``, ``load(path.npz)``
  Arrays in params/grads/buffers are updated in place, never rebound.
``Sequential(*layers)``   children "0", "1", ...; backward in reverse.

Layers (torch's argument names and weight layouts; ``dtype`` float32 default or float64;
``seed`` an int or a ``np.random.Generator``; weights drawn on the host then moved with asarray):
  ``Conv2d(in_ch, out_ch, kernel_size, stride=1, padding=0, dilation=1, groups=1, bias=True,
           needs_input_grad=True, dtype, seed, init="kaiming")``  -- needs_input_grad=False: a
           first layer; backward returns None and skips grad_x
  ``BatchNorm2d(num_features, eps=1e-5, momentum=0.1, affine=True, dtype)``
  ``ReLU()``, ``MaxPool2d(kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False)``,
  ``AvgPool2d(kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True)``,
  ``Linear(in_features, out_features, bias=True, dtype, seed, init="kaiming")`` on (N, in),
  ``Flatten()``, ``Identity()``, ``Dropout(p=0.5, seed)``,
  ``ResidualBlock(in_ch, out_ch, stride=1, dtype, seed)`` (ResNet basic block with BN),
  ``ToFloat(dtype=float32, scale=1/255)`` and ``Normalize(mean, std, dtype)``: the explicit
  uint8 -> float step.  Any layer given integer input raises TypeError pointing at ToFloat.
Init: ``convkit.nn.init`` (kaiming_normal/uniform, xavier_uniform/normal; seeded).

Losses -> ``(loss, grad wrt the first argument)``; reduction "mean" | "sum" | "none":
  ``softmax_cross_entropy(logits[N, C], labels[N] int, reduction, ignore_index=-100)``
  ``binary_cross_entropy_with_logits(logits, targets, weight=None, reduction)``
  ``smooth_l1_loss(pred, target, beta=1.0, reduction)``
  ``sigmoid_focal_loss(logits, targets, alpha=0.25, gamma=2.0, reduction)``
  helpers ``sigmoid(x)``, ``log_softmax(x, axis=-1)``

Optimisers (torch's exact rules; take a Module or its ``parameters()``; ``step()``,
``zero_grad()``, ``lr`` attribute):
  ``SGD(params, lr, momentum=0, dampening=0, weight_decay=0, nesterov=False)``
  ``Adam(params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0)``

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
from .module import Module, Sequential, check_float_input
from .optim import SGD, Adam

__all__ = ["Module", "Sequential", "check_float_input", "SGD", "Adam", "init",
           *_layers_all, *_losses_all]
