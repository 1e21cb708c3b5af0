"""Models: exact parameter counts, train/eval behaviour, activations and the registry."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jdl.models import ACTIVATIONS, PReLU, build_model
from jdl.models.cnn import CNN, activate_and_pool, max_pool_2x2
from jdl.state import count_params, create_train_state

# What each activation name must compute, written independently of the library.
REFERENCE_ACTIVATIONS = {
    "relu": lambda x: np.maximum(x, 0.0),
    "tanh": np.tanh,
    "sigmoid": lambda x: 1.0 / (1.0 + np.exp(-x)),
    "leaky_relu": lambda x: np.where(x >= 0, x, 0.01 * x),
    # flax's gelu is the tanh approximation.
    "gelu": lambda x: 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3))),
    "prelu": lambda x: np.where(x >= 0, x, 0.25 * x),  # PReLU at its initial slope
}


def key(seed: int) -> jax.Array:
    return jax.random.key(seed)


def abstract_init(model: nn.Module, input_shape):
    """Logits and variables of `model` on a batch of two, as shapes only (nothing computed)."""
    return jax.eval_shape(
        lambda: model.init_with_output(key(0), jnp.zeros((2, *input_shape)), train=False)
    )


@pytest.mark.parametrize(
    ("model_config", "num_outputs", "input_shape", "expected_params"),
    [
        # The documents' MNIST CNN. Conv 3*3*1*32+32 = 320; conv 3*3*32*64+64 = 18,496;
        # 28 -conv-> 26 -pool-> 13 -conv-> 11 -pool-> 5, so dense (5*5*64=1600)*10+10 = 16,010.
        pytest.param({"name": "cnn"}, 10, (28, 28, 1), 34_826, id="cnn-28x28x1"),
        # Conv 3*3*3*32+32 = 896; 18,496; 32 -> 30 -> 15 -> 13 -> 6, dense 6*6*64*10+10 = 23,050.
        pytest.param({"name": "cnn"}, 10, (32, 32, 3), 42_442, id="cnn-32x32x3"),
        # 320; 18,496; 8 -> 6 -> 3 -> 1 (too small to pool), dense 1*1*64*10+10 = 650.
        pytest.param({"name": "cnn"}, 10, (8, 8, 1), 19_466, id="cnn-8x8x1"),
        # 10 -> 8 -> 4 -> 2 -> 1: a 2x2 map is still pooled, so the dense is again 650.
        pytest.param({"name": "cnn"}, 10, (10, 10, 1), 19_466, id="cnn-10x10x1"),
        # Dense 784*256+256 = 200,960; head 256*10+10 = 2,570.
        pytest.param({"name": "mlp", "hidden_sizes": [256]}, 10, (28, 28, 1), 203_530, id="mlp"),
        # Dense 8*10+10 = 90; a single logit 10*1+1 = 11.
        pytest.param({"name": "mlp", "hidden_sizes": [10]}, 1, (8,), 101, id="mlp-one-logit"),
        # 784*128+128 = 100,480; 128*128+128 = 16,512; 128*10+10 = 1,290; dropout has none.
        pytest.param(
            {"name": "mlp", "hidden_sizes": [128, 128], "dropout_rate": 0.2},
            10,
            (784,),
            118_282,
            id="mlp-dropout",
        ),
        # Dense without bias 784*256 = 200,704; BN scale+bias 2*256 = 512; head 2,570.
        pytest.param(
            {"name": "mlp", "hidden_sizes": [256], "batch_norm": True},
            10,
            (784,),
            203_786,
            id="mlp-batch-norm",
        ),
        # Convs without bias 288 and 18,432; BN 2*32 + 2*64 = 192; head 16,010.
        pytest.param(
            {"name": "cnn", "batch_norm": True}, 10, (28, 28, 1), 34_922, id="cnn-batch-norm"
        ),
        # PReLU adds one slope per feature: 8*10+10 = 90; slopes 10; head 11.
        pytest.param(
            {"name": "mlp", "hidden_sizes": [10], "activation": "prelu"},
            1,
            (8,),
            111,
            id="mlp-prelu",
        ),
    ],
)
def test_model_has_exact_parameter_count_and_one_logit_per_output(
    model_config, num_outputs, input_shape, expected_params
):
    logits, variables = abstract_init(build_model(model_config, num_outputs), input_shape)
    assert count_params(variables["params"]) == expected_params
    assert logits.shape == (2, num_outputs)


@pytest.mark.parametrize(
    ("model_config", "input_shape", "num_features"),
    [
        ({"name": "mlp", "hidden_sizes": [5, 7], "batch_norm": True}, (3,), [5, 7]),
        ({"name": "cnn", "widths": [4, 6], "batch_norm": True}, (8, 8, 1), [4, 6]),
    ],
    ids=["mlp", "cnn"],
)
def test_batch_norm_variant_keeps_running_mean_and_variance_per_layer(
    model_config, input_shape, num_features
):
    _, variables = abstract_init(build_model(model_config, 2), input_shape)
    layers = variables["batch_stats"]
    assert sorted(layers) == [f"BatchNorm_{i}" for i in range(len(num_features))]
    for i, n in enumerate(num_features):
        assert layers[f"BatchNorm_{i}"]["mean"].shape == (n,)
        assert layers[f"BatchNorm_{i}"]["var"].shape == (n,)


def test_models_without_batch_norm_have_no_batch_stats():
    _, variables = abstract_init(build_model({"name": "cnn", "widths": [4]}, 2), (8, 8, 1))
    assert "batch_stats" not in variables


def test_batch_norm_uses_batch_statistics_in_training_and_running_ones_in_evaluation():
    model = build_model({"name": "mlp", "hidden_sizes": [8], "batch_norm": True}, 3)
    x = jax.random.normal(key(1), (6, 4))
    variables = model.init(key(0), x)
    first_rows_alone = x[:3]

    eval_logits = model.apply(variables, x)
    # In evaluation an example's logits do not depend on the rest of the batch.
    np.testing.assert_allclose(
        model.apply(variables, first_rows_alone), eval_logits[:3], rtol=1e-5, atol=1e-6
    )
    train_logits, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
    # In training they do, and the running statistics move towards the batch's.
    partial_logits, _ = model.apply(
        variables, first_rows_alone, train=True, mutable=["batch_stats"]
    )
    assert not np.allclose(partial_logits, train_logits[:3], atol=1e-3)
    old_mean = variables["batch_stats"]["BatchNorm_0"]["mean"]
    assert not np.allclose(updates["batch_stats"]["BatchNorm_0"]["mean"], old_mean)


@pytest.mark.parametrize(
    ("model_config", "input_shape"),
    [
        ({"name": "mlp", "hidden_sizes": [32]}, (16,)),
        ({"name": "cnn", "widths": [4], "dense_size": 16}, (8, 8, 1)),
    ],
    ids=["mlp", "cnn"],
)
def test_dropout_is_random_in_training_and_off_in_evaluation(model_config, input_shape):
    model = build_model({**model_config, "dropout_rate": 0.5}, 3)
    x = jax.random.normal(key(1), (4, *input_shape))
    variables = model.init(key(0), x)

    def logits(train: bool, dropout_seed: int):
        return model.apply(variables, x, train=train, rngs={"dropout": key(dropout_seed)})

    assert not np.allclose(logits(True, 1), logits(True, 2))
    np.testing.assert_array_equal(logits(False, 1), logits(False, 2))
    # Evaluation equals the same network built without dropout.
    no_dropout = build_model(model_config, 3)
    np.testing.assert_allclose(logits(False, 1), no_dropout.apply(variables, x), rtol=1e-6)


def test_prelu_learns_one_slope_per_feature_and_equals_leaky_relu_with_it():
    x = jnp.linspace(-3.0, 3.0, 12).reshape(2, 6)
    variables = PReLU().init(key(0), x)
    np.testing.assert_array_equal(variables["params"]["slope"], np.full(6, 0.25, np.float32))

    slope = jnp.full((6,), 0.1)
    np.testing.assert_allclose(
        PReLU().apply({"params": {"slope": slope}}, x), nn.leaky_relu(x, 0.1), rtol=1e-6
    )
    # The slope is learnable: d(sum of outputs)/d(slope) is the sum of the negative inputs.
    grad = jax.grad(lambda s: PReLU().apply({"params": {"slope": s}}, x).sum())(slope)
    np.testing.assert_allclose(grad, np.minimum(np.asarray(x), 0.0).sum(axis=0), rtol=1e-6)


@pytest.mark.parametrize("activation", [*ACTIVATIONS, "prelu"])
def test_every_activation_name_applies_that_function_between_layers(activation):
    assert set(REFERENCE_ACTIVATIONS) == {*ACTIVATIONS, "prelu"}
    model = build_model({"name": "mlp", "hidden_sizes": [5], "activation": activation}, 2)
    x = jax.random.normal(key(1), (3, 4))
    variables = model.init(key(0), x)
    dense_0, dense_1 = variables["params"]["Dense_0"], variables["params"]["Dense_1"]
    hidden = REFERENCE_ACTIVATIONS[activation](np.asarray(x @ dense_0["kernel"] + dense_0["bias"]))
    expected = hidden @ dense_1["kernel"] + dense_1["bias"]
    np.testing.assert_allclose(model.apply(variables, x), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("height_width", [(6, 6), (7, 7), (5, 8), (9, 4)])
def test_max_pool_2x2_equals_flax_max_pool_on_odd_and_even_sizes(height_width):
    x = jax.random.normal(key(0), (2, *height_width, 3))
    np.testing.assert_array_equal(
        max_pool_2x2(x), nn.max_pool(x, (2, 2), strides=(2, 2), padding="VALID")
    )


@pytest.mark.parametrize("height_width", [(6, 6), (7, 9)])
def test_max_pool_2x2_gradient_equals_flax_max_pool(height_width):
    # Continuous inputs: every window has one maximum, which takes the whole gradient.
    x = jax.random.normal(key(0), (2, *height_width, 3))
    g = jax.random.normal(key(1), (2, height_width[0] // 2, height_width[1] // 2, 3))
    (ours,) = jax.vjp(max_pool_2x2, x)[1](g)
    (flax_grad,) = jax.vjp(lambda x: nn.max_pool(x, (2, 2), strides=(2, 2)), x)[1](g)
    np.testing.assert_allclose(ours, flax_grad, rtol=1e-6)


@pytest.mark.parametrize("activation", list(ACTIVATIONS))
def test_activate_and_pool_equals_activation_then_pooling_with_the_same_gradient(activation):
    # Pooling first is only exact for non-decreasing activations. Mostly negative inputs
    # reach gelu's decreasing part (x < -0.75), so this fails if gelu were let pool first.
    x = 2 * jax.random.normal(key(0), (2, 7, 6, 3)) - 1
    g = jax.random.normal(key(1), (2, 3, 3, 3))
    activate = ACTIVATIONS[activation]

    def reference(x):
        return max_pool_2x2(activate(x))

    def ours(x):
        return activate_and_pool(x, activation, pool=True)

    np.testing.assert_allclose(ours(x), reference(x), rtol=1e-6)
    np.testing.assert_allclose(
        jax.vjp(ours, x)[1](g)[0], jax.vjp(reference, x)[1](g)[0], rtol=1e-5, atol=1e-7
    )


def unknown_model():
    build_model({"name": "transformer"}, 10)


def unknown_activation():
    model = build_model({"name": "mlp", "activation": "swishy"}, 10)
    model.init(key(0), jnp.zeros((1, 4)))


def unknown_field():
    build_model({"name": "mlp", "hidden": [32]}, 10)


@pytest.mark.parametrize(
    ("build", "valid_names"),
    [
        (unknown_model, "valid models: ['cnn', 'mlp', 'rnn', 'rnn_lm']"),
        (unknown_activation, "'gelu', 'leaky_relu', 'prelu', 'relu', 'sigmoid', 'tanh'"),
        (unknown_field, "'hidden_sizes'"),
    ],
    ids=["model", "activation", "field"],
)
def test_unknown_names_raise_value_error_listing_valid_names(build, valid_names):
    with pytest.raises(ValueError, match="Unknown") as error:
        build()
    assert valid_names in str(error.value)


def test_cnn_computes_convolutions_as_matmuls_on_cpu_and_natively_when_asked():
    x = jax.random.normal(key(1), (2, 28, 28, 1))
    auto, xla = (build_model({"name": "cnn", "conv_impl": c}, 10) for c in ("auto", "xla"))
    variables = auto.init(key(0), x)
    jax.tree.map(np.testing.assert_array_equal, variables, xla.init(key(0), x))
    # Nonzero biases: the patch form adds them after pooling, flax's layers before.
    variables = jax.tree_util.tree_map_with_path(
        lambda path, v: v + 0.1 if path[-1].key == "bias" else v, variables
    )
    np.testing.assert_allclose(auto.apply(variables, x), xla.apply(variables, x), atol=1e-5)

    def gradients(model):
        return jax.grad(lambda v: jnp.sum(jnp.sin(model.apply(v, x))))(variables)

    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
        gradients(auto),
        gradients(xla),
    )
    assert "conv_general_dilated" not in str(jax.make_jaxpr(auto.apply)(variables, x))
    assert "conv_general_dilated" in str(jax.make_jaxpr(xla.apply)(variables, x))
    with pytest.raises(ValueError, match="Unknown conv_impl 'winograd'"):
        build_model({"name": "cnn", "conv_impl": "winograd"}, 10).init(key(0), x)


def test_list_fields_become_tuples_so_models_stay_hashable():
    model = build_model({"name": "cnn", "widths": [4, 8]}, 10)
    assert model.widths == (4, 8)
    assert hash(model) == hash(build_model({"name": "cnn", "widths": (4, 8)}, 10))


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_bfloat16_computes_in_bfloat16_but_keeps_float32_parameters_and_logits(name):
    model = build_model({"name": name, "dtype": "bfloat16"}, 10)
    x = jnp.ones((2, 28, 28, 1))
    variables = model.init(key(0), x)
    assert {p.dtype for p in jax.tree_util.tree_leaves(variables)} == {jnp.dtype("float32")}
    logits = model.apply(variables, x)
    assert logits.dtype == jnp.float32
    jaxpr = str(jax.make_jaxpr(model.apply)(variables, x))
    assert "bf16" in jaxpr
    full = build_model({"name": name}, 10).apply(variables, x)
    np.testing.assert_allclose(logits, full, rtol=0.05, atol=0.05)  # same net, less precision


def test_create_train_state_starts_from_flax_init_values_bit_for_bit():
    # create_train_state compiles the initialisers with its own options (faster on CPU); the
    # values must still be exactly those of flax's own, uncompiled `init`.
    model = CNN(num_outputs=10)
    state = create_train_state(model, optax.adam(1e-3), (28, 28, 1), jax.random.key(3))
    expected = model.init(jax.random.key(3), jnp.zeros((1, 28, 28, 1)), train=False)["params"]
    for got, want in zip(jax.tree.leaves(state.params), jax.tree.leaves(expected), strict=True):
        np.testing.assert_array_equal(got, want)
