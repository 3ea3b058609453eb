"""Which stock classes our models replace, and install(): point mindnlp's public names and auto classes at ours.

install() rebinds the class names exported by ``mindnlp.transformers`` and ``mindnlp.transformers.models`` and
registers ours in every auto mapping that names the stock class (``AutoModelForCausalLM`` and the others). The
stock modeling modules and the per-model packages (``mindnlp.transformers.models.llama`` ...) keep the stock
classes, so ``stock_class()`` and explicit imports still reach them. For a model type this mindnlp lacks
altogether (deepseek on the 0.4.1 wheel), install() registers our class with its own config class in
``AutoConfig`` and ``AutoModelForCausalLM``, so a checkpoint of that type loads through the auto classes.

Entries resolve lazily: one whose accelerated module does not exist yet is skipped (debug log), and one that
fails to import is skipped with a warning, leaving stock in place. Nothing here imports mindnlp.transformers at
module level, so ``mindnlp.transformers`` can call install() as its last line.
"""
from dataclasses import dataclass
import importlib
import logging
import os

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Entry:
    """A stock class (module and name) and the ``module:Class`` path of ours that replaces it."""

    stock_module: str
    stock_name: str
    accelerated: str


MODELS = {
    "qwen2_moe": Entry("mindnlp.transformers.models.qwen2_moe.modeling_qwen2_moe", "Qwen2MoeForCausalLM",
                       "mindnlp.accel.models.qwen2_moe:Qwen2MoeForCausalLM"),
    "deepseek": Entry("mindnlp.transformers.models.deepseek.modeling_deepseek", "DeepseekForCausalLM",
                      "mindnlp.accel.models.deepseek:DeepseekForCausalLM"),
    "qwen2_vl": Entry("mindnlp.transformers.models.qwen2_vl.modeling_qwen2_vl", "Qwen2VLForConditionalGeneration",
                      "mindnlp.accel.models.qwen2_vl:Qwen2VLForConditionalGeneration"),
    "llama": Entry("mindnlp.transformers.models.llama.modeling_llama", "LlamaForCausalLM",
                   "mindnlp.accel.models.llama:LlamaForCausalLM"),
}

# Namespaces whose exported class names install() rebinds.
_NAMESPACES = ("mindnlp.transformers", "mindnlp.transformers.models")

# What install() changed, so uninstall() can put it back: model_type -> [(undo callable), ...].
_installed = {}
_logged_fallbacks = set()


def enabled():
    """True unless the environment sets MINDNLP_ACCEL to 0 (read on every call)."""
    return os.environ.get("MINDNLP_ACCEL", "1").strip() != "0"


def import_optional(module_name):
    """The module, or None when it (or a package above it) does not exist; other import errors propagate."""
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name and (module_name == error.name or module_name.startswith(error.name + ".")):
            return None
        raise


def stock_class(model_type):
    """The stock class our model replaces for ``model_type``, or None when this mindnlp lacks it."""
    entry = MODELS[model_type]
    module = import_optional(entry.stock_module)
    return None if module is None else getattr(module, entry.stock_name)


def accelerated_class(model_type):
    """Our class for ``model_type``; None when disabled, not in the table, not written yet or failing to import."""
    entry = MODELS.get(model_type)
    if entry is None or not enabled():
        return None
    module_name, class_name = entry.accelerated.split(":")
    try:
        module = import_optional(module_name)
    except Exception as error:  # a broken model file must not break mindnlp: stock stays in place
        logger.warning("mindnlp.accel: %s failed to import (%r); using stock %s", module_name, error,
                       entry.stock_name)
        return None
    if module is None:
        logger.debug("mindnlp.accel: %s not available; using stock %s", module_name, entry.stock_name)
        return None
    return getattr(module, class_name)


def install():
    """Make the public names and auto classes resolve to our classes. Idempotent; a no-op when disabled."""
    if not enabled():
        return
    # When called first, this import runs mindnlp.transformers' own install() call, which does the work.
    import mindnlp.transformers  # noqa: F401
    for model_type in MODELS:
        if model_type in _installed:
            continue
        ours, stock = accelerated_class(model_type), stock_class(model_type)
        if ours is not None and stock is not None:
            _installed[model_type] = _replace(model_type, stock, ours)
        elif ours is not None:
            _installed[model_type] = _register_new(model_type, ours)


def uninstall(*model_types):
    """Put back what install() changed for these model types (all when none are named)."""
    for model_type in model_types or list(_installed):
        for undo in _installed.pop(model_type, ()):
            undo()


def _replace(model_type, stock, ours):
    """Rebind names and register auto mappings for one model type; return the undo steps."""
    from mindnlp.transformers.models.auto import configuration_auto, modeling_auto
    from mindnlp.transformers.models.auto.auto_factory import _LazyAutoMapping

    undo = []
    name = MODELS[model_type].stock_name
    for namespace_name in _NAMESPACES:
        namespace = importlib.import_module(namespace_name)
        if getattr(namespace, name, None) is stock:
            setattr(namespace, name, ours)
            undo.append(lambda namespace=namespace: setattr(namespace, name, stock))

    # qwen2_vl has no AutoConfig entry in mindnlp 0.4: its auto mapping is keyed by the class's own config class
    config_mapping = configuration_auto.CONFIG_MAPPING
    config_class = config_mapping[model_type] if model_type in config_mapping else ours.config_class
    for mapping in vars(modeling_auto).values():
        if isinstance(mapping, _LazyAutoMapping) and mapping._model_mapping.get(model_type) == name:
            mapping.register(config_class, ours, exist_ok=True)
            undo.append(lambda mapping=mapping: mapping._extra_content.pop(config_class, None))
    return undo


def _register_new(model_type, ours):
    """For a model type this mindnlp lacks (deepseek on the 0.4.1 wheel): register our config class
    for it and ours in AutoModelForCausalLM; return the undo steps. Nothing when the type is known."""
    from mindnlp.transformers.models.auto import configuration_auto, modeling_auto

    config_mapping = configuration_auto.CONFIG_MAPPING
    if model_type in config_mapping:
        return []
    config_class = ours.config_class
    causal_lm = modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING
    config_mapping.register(model_type, config_class)
    causal_lm.register(config_class, ours)
    return [lambda: config_mapping._extra_content.pop(model_type, None),
            lambda: causal_lm._extra_content.pop(config_class, None)]


class StockFallbackMixin:
    """For our model classes: a config ``supports()`` rejects gets the stock model, by every way of making one.

    ``from_pretrained``, ``_from_config`` (what the auto classes call) and direct construction (as Janus builds
    its ``LlamaForCausalLM(config)``) all return the stock class for such a config; the reason is logged once.
    """

    @classmethod
    def supports(cls, config):
        """(True, "") when our implementation handles ``config``, else (False, reason)."""
        raise NotImplementedError(f"{cls.__name__} must say which configs it supports")

    @classmethod
    def _fallback_for(cls, config, load_kwargs=None):
        """The stock class to use instead of ours for ``config`` (and loading options), or None."""
        ok, reason = cls.supports(config)
        load_kwargs = load_kwargs or {}
        unsupported = sorted(key for key in _UNSUPPORTED_LOAD_KWARGS if load_kwargs.get(key) not in (None, False))
        if ok and unsupported:
            ok, reason = False, f"loading with {', '.join(unsupported)} (our stacked layouts load tensor by tensor)"
        if ok:
            return None
        stock = stock_class(config.model_type)
        if stock is None:
            raise ValueError(f"{cls.__name__} does not support this config ({reason}) and there is no stock class")
        if (cls.__name__, reason) not in _logged_fallbacks:
            _logged_fallbacks.add((cls.__name__, reason))
            logger.warning("mindnlp.accel: %s falls back to stock %s: %s", cls.__name__, stock.__name__, reason)
        return stock

    def __new__(cls, config=None, *args, **kwargs):
        stock = cls._fallback_for(config) if config is not None else None
        if stock is not None:
            return stock(config, *args, **kwargs)
        return super().__new__(cls)

    @classmethod
    def _from_config(cls, config, **kwargs):
        stock = cls._fallback_for(config)
        if stock is not None:
            return stock._from_config(config, **kwargs)
        return super()._from_config(config, **kwargs)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        config = kwargs.get("config")
        if not hasattr(config, "model_type"):
            # Read the config only to decide; the chosen class loads it again exactly as stock would.
            location = {key: kwargs[key] for key in _CONFIG_LOCATION_KWARGS if key in kwargs}
            config = cls.config_class.from_pretrained(config or pretrained_model_name_or_path, **location)
        stock = cls._fallback_for(config, kwargs)
        if stock is not None:
            return stock.from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)
        return super().from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)


# from_pretrained arguments whose loaders assign only parameters named in state_dict(), skipping the
# checkpoint slots our fused and stacked layers fill: with any of them set, the stock class loads.
_UNSUPPORTED_LOAD_KWARGS = ("low_cpu_mem_usage", "device_map")

# from_pretrained arguments that say where the config file is.
_CONFIG_LOCATION_KWARGS = ("cache_dir", "force_download", "local_files_only", "proxies", "resume_download",
                           "revision", "subfolder", "token", "mirror")
