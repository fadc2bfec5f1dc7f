"""The files and folders a task's spec names, checked for existence before torch is imported (seconds), so a
mistyped path answers at once. The tasks read them later and check their contents."""

from pathlib import Path

from omegaconf import DictConfig

from reid_tao.errors import DataError

# task -> (spec field, kind) of paths that must exist when set; "data" is a folder or a list file
TASK_PATHS = {
    "train": (("train.resume_training_checkpoint_path", "checkpoint"),),
    "evaluate": (
        ("evaluate.checkpoint", "checkpoint"),
        ("evaluate.query_dataset", "data"),
        ("evaluate.test_dataset", "data"),
    ),
    "inference": (
        ("inference.checkpoint", "checkpoint"),
        ("inference.query_dataset", "data"),
        ("inference.test_dataset", "data"),
    ),
    "export": (("export.checkpoint", "checkpoint"),),
    "tune": (("dataset.train_dataset_dir", "data"), ("tune.query_dataset", "data"), ("tune.test_dataset", "data")),
    "crops": (("crops.input", "input"), ("crops.tracks_file", "input")),
}
WHAT = {"checkpoint": "checkpoint", "data": "folder or list file", "input": "file or folder"}
DATASET_FOLDERS = ("dataset.train_dataset_dir", "dataset.query_dataset_dir", "dataset.test_dataset_dir")


def _value(config: DictConfig, dotted: str):
    section, key = dotted.split(".")
    return config[section][key]


def named_paths(config: DictConfig, task: str) -> list[tuple[str, str]]:
    """(field, kind) of the set paths `task` reads."""
    fields = list(TASK_PATHS.get(task, ()))
    if task == "train" and not config.dataset.synthetic:  # synthetic data is generated when missing
        fields += [(field, "data") for field in DATASET_FOLDERS]
    elif task == "train":  # (see check_synthetic_target)
        fields += [
            (field, "data") for field in DATASET_FOLDERS[1:] if _outside_generated(config, _value(config, field))
        ]
    elif task == "evaluate":  # each of evaluate.* falls back to its dataset.* folder
        fields += [
            (f"dataset.{split}_dataset_dir", "data")
            for split in ("query", "test")
            if not config.evaluate[f"{split}_dataset"]
        ]
    elif task == "inference" and not (config.inference.query_dataset or config.inference.test_dataset):
        fields += [(field, "data") for field in DATASET_FOLDERS[1:]]  # both fall back together
    if task == "train" and config.adaptation.enable:  # the labelled source stream of adaptation
        fields.append(("adaptation.source_dataset_dir", "data"))
    return [(field, kind) for field, kind in fields if _value(config, field)]


def _outside_generated(config: DictConfig, path) -> bool:
    """A validation folder that synthetic generation does not write (it writes beside the training folder)."""
    train = config.dataset.train_dataset_dir
    return bool(path) and not (train and Path(path).parent == Path(train).parent)


def _empty_folder(path: Path) -> bool:
    return path.is_dir() and next(path.iterdir(), None) is None


def check_synthetic_target(config: DictConfig, spec_config: DictConfig | None = None) -> None:
    """dataset.synthetic=true generates the dataset where dataset.train_dataset_dir points (into its parent) only
    where the spec file itself points (``spec_config``: the spec file without the command line's overrides;
    None: ``config`` is it) or into an empty folder the user made: a mistyped override would otherwise be
    filled with generated data and trained on."""
    train = config.dataset.train_dataset_dir
    if not (config.dataset.synthetic and train) or Path(train).exists():
        return
    own = (spec_config if spec_config is not None else config).dataset.train_dataset_dir
    if train != own and not _empty_folder(Path(train).parent):
        raise DataError(
            f"dataset.train_dataset_dir: folder {train} does not exist; dataset.synthetic=true "
            "generates data only at the spec file's own path or into an empty folder you made "
            f"(mkdir {Path(train).parent}); correct dataset.train_dataset_dir"
        )


def check_paths(config: DictConfig, task: str, spec_config: DictConfig | None = None) -> None:
    """One DataError line for the first path named in the spec that does not exist. ``spec_config``: the spec
    file alone, without the command line's overrides (a synthetic dataset is not generated at a mistyped one)."""
    if task == "train":
        check_synthetic_target(config, spec_config)
    for field, kind in named_paths(config, task):
        path = _value(config, field)
        if not Path(path).exists():
            what = WHAT[kind]
            raise DataError(f"{field}: {what} {path} does not exist; correct {field}")
