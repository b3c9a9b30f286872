"""Optimizers and clipping, checked against torch.optim on identical gradients."""

import numpy as np
import pytest

from xpvision import backend, optim
from xpvision.atomic import save_npz
from xpvision.errors import ConfigError, TrainingError, WeightsError
from xpvision.nn import engine
from xpvision.nn.base import Layer, Sequential

torch = pytest.importorskip("torch")

SHAPES = {"W": (3, 4), "b": (4,)}


class Toy(Layer):
    """A parameter holder (no computation): ``W (3, 4)`` and ``b (4,)``."""

    registered = False

    def __init__(self, rng, dtype, xp=np):
        super().__init__()
        for key, shape in SHAPES.items():
            self.add_param(key, xp.asarray(rng.standard_normal(shape).astype(dtype)))


def toy_model(dtype=np.float64, seed=0, xp=np):
    rng = np.random.default_rng(seed)
    return Sequential(("a", Toy(rng, dtype, xp)), ("b", Toy(rng, dtype, xp)))


def torch_params(model):
    return [torch.tensor(backend.to_numpy(layer.params[key]).copy(), requires_grad=True)
            for _, layer, key in model.named_parameters()]


def gradient_sequence(model, steps, seed=1):
    rng = np.random.default_rng(seed)
    return [[rng.standard_normal(layer.params[key].shape) for _, layer, key in model.named_parameters()]
            for _ in range(steps)]


def set_grads(model, grads):
    for (_, layer, key), g in zip(model.named_parameters(), grads, strict=True):
        xp = backend.get_array_module(layer.grads[key])
        layer.grads[key][...] = xp.asarray(g.astype(layer.grads[key].dtype))


def max_diff(model, tparams):
    return max(float(np.abs(backend.to_numpy(layer.params[key]) - t.detach().numpy()).max())
               for (_, layer, key), t in zip(model.named_parameters(), tparams, strict=True))


CASES = [
    (optim.SGD, dict(lr=0.1, weight_decay=0.01), torch.optim.SGD, dict(lr=0.1, weight_decay=0.01)),
    (optim.Momentum, dict(lr=0.05, momentum=0.9, weight_decay=1e-3),
     torch.optim.SGD, dict(lr=0.05, momentum=0.9, weight_decay=1e-3)),
    (optim.Nesterov, dict(lr=0.05, momentum=0.8),
     torch.optim.SGD, dict(lr=0.05, momentum=0.8, nesterov=True)),
    (optim.AdaGrad, dict(lr=0.1, lr_decay=0.01, weight_decay=1e-3),
     torch.optim.Adagrad, dict(lr=0.1, lr_decay=0.01, weight_decay=1e-3)),
    (optim.RMSprop, dict(lr=0.01, alpha=0.9, weight_decay=1e-3),
     torch.optim.RMSprop, dict(lr=0.01, alpha=0.9, weight_decay=1e-3)),
    (optim.RMSprop, dict(lr=0.01, momentum=0.9), torch.optim.RMSprop, dict(lr=0.01, momentum=0.9)),
    (optim.Adam, dict(lr=0.01, betas=(0.8, 0.99), weight_decay=1e-2),
     torch.optim.Adam, dict(lr=0.01, betas=(0.8, 0.99), weight_decay=1e-2)),
    (optim.AdamW, dict(lr=0.01, weight_decay=0.1), torch.optim.AdamW, dict(lr=0.01, weight_decay=0.1)),
]


@pytest.mark.parametrize(("dtype", "tol"), [(np.float64, 1e-6), (np.float32, 1e-5)])
@pytest.mark.parametrize(("ours", "kwargs", "theirs", "tkwargs"), CASES, ids=[c[0].__name__ for c in CASES])
def test_matches_torch(ours, kwargs, theirs, tkwargs, dtype, tol):
    model = toy_model(dtype)
    tparams = torch_params(model)
    opt, topt = ours(model, **kwargs), theirs(tparams, **tkwargs)
    for grads in gradient_sequence(model, steps=8):
        set_grads(model, grads)
        for t, g in zip(tparams, grads, strict=True):
            t.grad = torch.tensor(g.astype(dtype))
        opt.step()
        topt.step()
    assert max_diff(model, tparams) <= tol
    assert max_diff(model, torch_params(toy_model(dtype))) > 0.01  # the parameters did move


def test_param_groups_with_own_lr_match_torch():
    model = toy_model()
    tparams = torch_params(model)
    opt = optim.Adam([{"params": model["a"], "lr": 1e-3}, {"params": [(model["b"], "W"), (model["b"], "b")]}],
                     lr=1e-2)
    topt = torch.optim.Adam([{"params": tparams[:2], "lr": 1e-3}, {"params": tparams[2:]}], lr=1e-2)
    assert [g["lr"] for g in opt.param_groups] == [1e-3, 1e-2]
    for grads in gradient_sequence(model, steps=5):
        set_grads(model, grads)
        for t, g in zip(tparams, grads, strict=True):
            t.grad = torch.tensor(g)
        opt.step()
        topt.step()
    assert max_diff(model, tparams) <= 1e-9


def test_parameters_become_views_of_one_flat_buffer():
    model = toy_model(np.float32)
    opt = optim.Adam(model)
    (bucket,) = opt._buckets
    for _, layer, key in model.named_parameters():
        assert np.shares_memory(layer.params[key], bucket.params)
        assert np.shares_memory(layer.grads[key], bucket.grads)
        assert layer.params[key].shape == SHAPES[key]
    assert bucket.params.size == 2 * (12 + 4) and bucket.dtype == np.float32


def conv_and_c_ordered_twin(*args):
    """A ``Conv2d(*args)`` (W in (kh, kw, I, O) memory) and one with the same weights in C order."""
    from xpvision.nn import Conv2d

    conv, plain = Conv2d(*args), Conv2d(*args)
    plain.load_state_dict(conv.state_dict())
    plain.params["W"] = np.ascontiguousarray(plain.params["W"])
    plain.grads["W"] = np.zeros_like(plain.params["W"])
    return conv, plain


def test_parameters_keep_their_memory_layout_and_state_is_saved_in_shape_order():
    from xpvision.nn import functional as F

    conv, plain = conv_and_c_ordered_twin(3, 4, 2)  # W (4, 3, 2, 2), in memory (2, 2, 3, 4)
    opts = [optim.Adam(layer, lr=0.1) for layer in (conv, plain)]
    assert np.shares_memory(F.conv_weight_matrix(conv.params["W"]), opts[0]._buckets[0].params)
    assert conv.params["W"].strides == conv.grads["W"].strides != plain.params["W"].strides
    rng = np.random.default_rng(0)
    for _ in range(2):
        grads = {key: rng.standard_normal(g.shape).astype(np.float32) for key, g in conv.grads.items()}
        for layer, opt in zip((conv, plain), opts, strict=True):
            for key, value in grads.items():
                layer.grads[key][...] = value
            opt.step()
    np.testing.assert_array_equal(conv.params["W"], plain.params["W"])
    saved = [opt.state_dict() for opt in opts]
    for key, value in saved[1].items():
        np.testing.assert_array_equal(saved[0][key], value)
    opts[0].load_state_dict(saved[1])  # a state saved from C-ordered parameters resumes these
    for name in ("exp_avg", "exp_avg_sq"):
        flat = opts[0]._buckets[0].state[name]
        np.testing.assert_array_equal(opts[0]._buckets[0].logical(flat), saved[1][f"bucket0.{name}"])


def test_clip_grad_norm_through_an_optimizer_does_not_depend_on_the_memory_layout():
    conv, plain = conv_and_c_ordered_twin(64, 64, 3)
    opts = [optim.SGD(layer) for layer in (conv, plain)]
    rng = np.random.default_rng(0)
    for _ in range(5):
        grads = {key: (rng.standard_normal(g.shape) * 10.0 ** rng.integers(-3, 4, g.shape)).astype(np.float32)
                 for key, g in conv.grads.items()}
        norms = []
        for layer, opt in zip((conv, plain), opts, strict=True):
            for key, value in grads.items():
                layer.grads[key][...] = value
            norms.append(optim.clip_grad_norm(opt, 1.0))
        assert norms[0] == norms[1]
        np.testing.assert_array_equal(conv.grads["W"], plain.grads["W"])


def test_values_survive_flattening():
    model, reference = toy_model(), toy_model()
    optim.SGD(model)
    for key, value in reference.state_dict().items():
        np.testing.assert_array_equal(model.state_dict()[key], value)


def test_frozen_layers_are_left_out():
    model = toy_model()
    model["a"].freeze()
    frozen_before = {k: v.copy() for k, v in model["a"].params.items()}
    opt = optim.Momentum(model, lr=0.1)
    assert opt._buckets[0].params.size == 16
    set_grads(model, gradient_sequence(model, 1)[0])
    opt.step()
    for key, value in frozen_before.items():
        np.testing.assert_array_equal(model["a"].params[key], value)
    assert not np.allclose(model["b"].params["W"], toy_model()["b"].params["W"])


def test_all_frozen_or_bad_groups_are_refused():
    model = toy_model()
    with pytest.raises(ConfigError, match="no trainable parameters"):
        optim.Adam(toy_model().freeze())
    with pytest.raises(ConfigError, match=r"unknown keys.*momentum"):
        optim.Adam([{"params": model, "momentum": 0.9}])
    with pytest.raises(ConfigError, match="more than one parameter group"):
        optim.SGD([{"params": model["a"]}, {"params": model}])
    with pytest.raises(ConfigError, match="lr must be"):
        optim.SGD(toy_model(), lr=-1.0)
    with pytest.raises(ConfigError, match=r"unknown optimizer 'adamax'.*'adam'"):
        optim.build_optimizer("adamax", toy_model())


def test_rebinding_a_parameter_after_building_is_detected():
    model = toy_model()
    opt = optim.Adam(model)
    model["a"].params["W"] = model["a"].params["W"].copy()  # what model.to(device) does
    with pytest.raises(TrainingError, match=r"a\.W.*build the optimizer after moving"):
        opt.step()


def test_load_state_dict_resumes_bit_identically(tmp_path):
    grads = gradient_sequence(toy_model(np.float32), steps=6)

    def run(model, opt, steps):
        for g in steps:
            set_grads(model, g)
            opt.step()

    straight = toy_model(np.float32)
    run(straight, optim.Adam(straight, lr=0.01), grads)

    first = toy_model(np.float32)
    first_opt = optim.Adam(first, lr=0.01)
    run(first, first_opt, grads[:3])
    save_npz(tmp_path / "opt.npz", first_opt.state_dict())
    save_npz(tmp_path / "model.npz", first.state_dict())

    resumed = toy_model(np.float32, seed=5)
    resumed_opt = optim.Adam(resumed, lr=0.5)
    resumed.load_state_dict(dict(np.load(tmp_path / "model.npz", allow_pickle=False)))
    resumed_opt.load_state_dict(dict(np.load(tmp_path / "opt.npz", allow_pickle=False)))
    assert resumed_opt.lr == 0.01 and resumed_opt.step_count == 3
    run(resumed, resumed_opt, grads[3:])
    for key, value in straight.state_dict().items():
        np.testing.assert_array_equal(resumed.state_dict()[key], value)


def test_load_state_dict_refuses_other_optimizer_or_layout():
    state = optim.Adam(toy_model()).state_dict()
    with pytest.raises(WeightsError, match="'Adam', not RMSprop"):
        optim.RMSprop(toy_model()).load_state_dict(state)
    model = toy_model()
    model["a"].freeze()
    with pytest.raises(WeightsError, match="holds 32 values, this optimizer 16"):
        optim.Adam(model).load_state_dict(state)


@pytest.mark.parametrize("through_optimizer", [False, True])
def test_clip_grad_norm_matches_torch(through_optimizer):
    model = toy_model()
    opt = optim.SGD(model)
    grads = gradient_sequence(model, 1)[0]
    set_grads(model, grads)
    tparams = torch_params(model)
    for t, g in zip(tparams, grads, strict=True):
        t.grad = torch.tensor(g)
    norm = optim.clip_grad_norm(opt if through_optimizer else model, 1.5)
    tnorm = torch.nn.utils.clip_grad_norm_(tparams, 1.5)
    assert norm == pytest.approx(float(tnorm), rel=1e-12)
    for (_, layer, key), t in zip(model.named_parameters(), tparams, strict=True):
        np.testing.assert_allclose(layer.grads[key], t.grad.numpy(), rtol=1e-12)
    assert optim.clip_grad_norm(model, 10.0) == pytest.approx(1.5, rel=1e-5)  # already within: unchanged


def test_update_on_device_matches_numpy(xp):
    ref_model, dev_model = toy_model(np.float32), toy_model(np.float32, xp=xp)
    ref_opt, dev_opt = optim.AdamW(ref_model, lr=0.01), optim.AdamW(dev_model, lr=0.01)
    for grads in gradient_sequence(ref_model, 4):
        set_grads(ref_model, grads)
        set_grads(dev_model, grads)
        optim.clip_grad_norm(ref_opt, 1.0)
        optim.clip_grad_norm(dev_opt, 1.0)
        ref_opt.step()
        dev_opt.step()
    for key, value in ref_model.state_dict().items():
        np.testing.assert_allclose(dev_model.state_dict()[key], value, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", sorted(optim.OPTIMIZERS))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_reference_engine_updates_each_parameter_alone_with_the_same_bits(name, dtype):
    """The reference engine (one bucket per parameter) against the tuned one (one flat buffer per group):
    the same element-wise arithmetic, so the same bits, in two groups with their own learning rates."""
    hyper = {"weight_decay": 0.01} if name != "sgd" else {}
    results = {}
    try:
        for kernels in engine.ENGINES:
            engine.set_engine(kernels)
            model = toy_model(dtype)
            opt = optim.build_optimizer(name, [{"params": model["a"], "lr": 0.03}, {"params": model["b"]}],
                                        lr=0.01, **hyper)
            assert len(opt._buckets) == (4 if kernels == "reference" else 2)
            for grads in gradient_sequence(model, steps=5):
                set_grads(model, grads)
                opt.step()
            results[kernels] = model.state_dict()
    finally:
        engine.set_engine(None)
    for key, value in results["tuned"].items():
        np.testing.assert_array_equal(results["reference"][key], value, err_msg=key)
    assert not np.array_equal(results["tuned"]["a.W"], toy_model(dtype).state_dict()["a.W"])
