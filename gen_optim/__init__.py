"""gen_optim: GeN-fitted per-group learning rates and AdaPEFT subset selection for PyTorch."""
from .closure import ProbeClosure, iterator_closure, replay_closure
from .fit import Fit, Probes, fit_quadratic, ppi
from .gen_adamw import GeNAdamW
from .grouping import CATEGORIES, categorize, group_parameters
from .lora import equip_lora
from .mask import FrontierPoint, Mask
from .peft_export import to_peft_config
from .probe import ClosureError
from .subset import load_subset, save_subset

__version__ = "0.1.0"
__all__ = [
    "CATEGORIES", "ClosureError", "Fit", "FrontierPoint", "GeNAdamW", "Mask", "ProbeClosure", "Probes", "categorize",
    "equip_lora", "fit_quadratic", "group_parameters", "iterator_closure", "load_subset", "ppi", "replay_closure",
    "save_subset", "to_peft_config",
]
