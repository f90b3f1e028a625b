"""Synthetic low-light data: Lv gamma darkening, progressive darkening, sensor noise.

BasicSR-style: each degradation is a deterministic function of (tensor, parameters),
and random parameters come from separate samplers that take a torch.Generator. All
images are float32 tensors Nx3xHxW in [0, 1] (sRGB values, as read from a file);
a parameter is a float, or a tensor of shape Nx1x1x1 giving one value per image.

* :func:`lv_darken` - ``I_out = beta * (alpha * I_in) ** gamma`` (Lv et al., "Attention
  guided low-light image enhancement with a large scale low-light simulation dataset",
  IJCV 2021, Sec. 3.1), with alpha ~ U(0.9, 1), beta ~ U(0.5, 1), gamma ~ U(1.5, 5).
* :func:`progressive_darken` - the same map as a T-step forward process.
* :func:`scale_darken` - plain dimming ``I_out = factor * I_in``.
* :func:`add_sensor_noise` - Poisson shot noise plus Gaussian read noise in linear
  light (the heteroscedastic model of physics-based low-light simulation, e.g. Wei et
  al., "A physics-based noise formation model for extreme low-light raw denoising",
  CVPR 2020, Eq. 2-4, without the raw-specific row and quantisation terms).
* :func:`random_pair` - a dark version of a batch, for on-the-fly training pairs.
* :func:`darken_folder` / :func:`rebuild_from_manifest` - a folder of photos to
  ``OUT/low``, ``OUT/high`` (and ``OUT/steps``) plus a manifest from which the same
  dataset is rebuilt pixel for pixel. Each is a plan (manifest records:
  :func:`plan_records` or :func:`manifest_records`) handed to :func:`write_dataset`;
  ``lldiff darken`` makes the plan first, to size its progress bar, then hands it on.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Callable

import torch

from lldiff_cli.atomic import atomic_write
from lldiff_cli.batch import (BatchReport, Inputs, ItemStatus, command_inputs, prepare_output_dir,
                             refuse_shared_outputs, refuse_writing_inputs, run_batch)
from lldiff_cli.errors import LldiffError
from lldiff_cli.images import Image, check_format, output_path, write_like

Param = float | torch.Tensor  # a float, or Nx1x1x1: one value per image of the batch
MODES = ("lv", "scale")
MANIFEST_NAME = "manifest.jsonl"


# --- colour transfer -----------------------------------------------------------


def srgb_to_linear(x: torch.Tensor) -> torch.Tensor:
    """sRGB values in [0, 1] -> linear light in [0, 1] (IEC 61966-2-1 transfer)."""
    x = x.clamp(0, 1)
    return torch.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4)


def linear_to_srgb(y: torch.Tensor) -> torch.Tensor:
    """Linear light in [0, 1] -> sRGB values in [0, 1]; inverse of :func:`srgb_to_linear`."""
    y = y.clamp(0, 1)
    return torch.where(y <= 0.0031308, 12.92 * y, 1.055 * y ** (1 / 2.4) - 0.055)


# --- degradations: deterministic functions of (tensor, parameters) ----------------


def lv_darken(x: torch.Tensor, alpha: Param, beta: Param, gamma: Param) -> torch.Tensor:
    """Lv et al.'s synthesis: ``beta * (alpha * x) ** gamma``. x: Nx3xHxW in [0, 1]."""
    return beta * (alpha * x.clamp(0, 1)) ** gamma


def scale_darken(x: torch.Tensor, factor: Param) -> torch.Tensor:
    """Plain dimming ``factor * x`` (the 50 % dimming of DDPM low-light studies)."""
    return factor * x.clamp(0, 1)


def progressive_coefficients(beta: Param, gamma: Param, steps: int) -> tuple[Param, Param]:
    """The per-step ``(a, eta)`` of the T-step darkening ``x_t = (a * x_{t-1}) ** eta``.

    Unrolling the recursion, ``x_T = a ** S * x_0 ** (eta ** T)`` with
    ``S = eta + eta**2 + ... + eta**T = eta * (1 - eta**T) / (1 - eta)``. Choosing
    ``eta = gamma ** (1 / T)`` and ``a = beta ** (1 / S)``, i.e.
    ``a = beta ** ((1 - eta) / (eta * (1 - eta ** T)))``, makes ``x_T = beta * x_0 ** gamma``.
    S is summed term by term, which also covers gamma = 1 (eta = 1, S = T) exactly.
    """
    if steps < 1:
        raise LldiffError(f"progressive darkening needs steps >= 1, got {steps}")
    eta = gamma ** (1.0 / steps)
    s = sum(eta ** k for k in range(1, steps + 1))
    return beta ** (1.0 / s), eta


def progressive_darken(x: torch.Tensor, alpha: Param, beta: Param, gamma: Param,
                       steps: int) -> list[torch.Tensor]:
    """Lv darkening as a forward process of ``steps`` steps; returns [x_1, ..., x_T].

    The chain starts from ``x_0 = alpha * x`` and ends at
    ``x_T = beta * (alpha * x) ** gamma == lv_darken(x, alpha, beta, gamma)``.
    It runs in float64 so that x_T matches the closed form to float32 precision.
    """
    a, eta = progressive_coefficients(_f64(beta), _f64(gamma), steps)
    current = _f64(alpha) * x.clamp(0, 1).double()
    out = []
    for _ in range(steps):
        current = (a * current) ** eta
        out.append(current.to(x.dtype))
    return out


def add_sensor_noise(x: torch.Tensor, gain: Param, read_noise: Param,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """Shot and read noise of a sensor, added in linear light.

    x: Nx3xHxW sRGB in [0, 1]. The sRGB transfer takes x to linear light v; a pixel
    collects ``v / gain`` photo-electrons (so ``gain`` is the fraction of full scale
    one electron is worth: 1e-3 means a full-well of 1000 electrons); shot noise is
    Poisson in the electron count, read noise is Gaussian with standard deviation
    ``read_noise`` (in units of full scale)::

        y = gain * Poisson(v / gain) + N(0, read_noise ** 2)

    so ``E[y] = v`` and ``Var[y] = gain * v + read_noise ** 2``. y is clipped to
    [0, 1] (the sensor neither goes negative nor past saturation) and taken back to sRGB.
    """
    linear = srgb_to_linear(x)
    electrons = torch.poisson(linear / gain, generator=generator)
    read = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
    return linear_to_srgb(electrons * gain + read_noise * read)


def _f64(p: Param) -> Param:
    return p.double() if isinstance(p, torch.Tensor) else float(p)


# --- parameters and their samplers ------------------------------------------------


# The values where each parameter means what it says, as (low, high, low end open): alpha and
# beta (and the dimming factor) keep a fraction of the light, in (0, 1] (0 would be black, above 1
# would push highlights past white); gamma > 0 bends the curve (below 1 brightens, allowed for
# experiments; 20 maps mid-grey to ~1e-6; 0 would be a flat grey); the gain is the fraction of full
# scale one electron is worth, in (0, 1] (0 divides by zero); the read noise is a standard
# deviation in units of full scale, in [0, 1]. Ranges (LvRanges, NoiseRanges) and manifest
# records are held to the same limits.
LIMITS = {"alpha": (0.0, 1.0, True), "beta": (0.0, 1.0, True), "gamma": (0.0, 20.0, True),
          "factor": (0.0, 1.0, True), "gain": (0.0, 1.0, True), "read_noise": (0.0, 1.0, False)}


def _value_problem(name: str, value: float) -> str | None:
    """Why ``value`` is not an allowed value of parameter ``name`` (see LIMITS), or None;
    NaN and infinities never are."""
    low, high, low_open = LIMITS[name]
    try:
        value = float(value)
    except OverflowError:  # a JSON integer of 400 digits
        value = math.inf
    above_low = low < value if low_open else low <= value
    if math.isfinite(value) and above_low and value <= high:
        return None
    return f"{name} {value:g} is not allowed: need {low:g} {'<' if low_open else '<='} {name} <= {high:g}"


def _check_range(name: str, rng: tuple[float, float], low: float, high: float,
                 low_open: bool = True) -> tuple[float, float]:
    lo, hi = (float(v) for v in rng)
    below = lo <= low if low_open else lo < low
    if below or hi > high or lo > hi or not (math.isfinite(lo) and math.isfinite(hi)):
        bound = "(" if low_open else "["
        raise LldiffError(f"{name} range ({lo:g}, {hi:g}) is not allowed: need MIN <= MAX, "
                          f"both in {bound}{low:g}, {high:g}]")
    return lo, hi


@dataclass(frozen=True)
class LvParams:
    """One draw of Lv et al.'s darkening: ``beta * (alpha * x) ** gamma``."""

    alpha: float
    beta: float
    gamma: float


@dataclass(frozen=True)
class LvRanges:
    """Uniform ranges of the Lv parameters; defaults are the paper's."""

    alpha: tuple[float, float] = (0.9, 1.0)
    beta: tuple[float, float] = (0.5, 1.0)
    gamma: tuple[float, float] = (1.5, 5.0)

    def __post_init__(self):
        object.__setattr__(self, "alpha", _check_range("alpha", self.alpha, *LIMITS["alpha"]))
        object.__setattr__(self, "beta", _check_range("beta", self.beta, *LIMITS["beta"]))
        object.__setattr__(self, "gamma", _check_range("gamma", self.gamma, *LIMITS["gamma"]))


@dataclass(frozen=True)
class NoiseParams:
    """One draw of the sensor noise: see :func:`add_sensor_noise`."""

    gain: float
    read_noise: float


@dataclass(frozen=True)
class NoiseRanges:
    """Ranges of the noise parameters, each sampled log-uniformly (as Wei et al. sample
    the system gain; uniformly when MIN is 0): by default a full-well of 400 to 4000
    electrons and read noise of 0.05 % to 0.5 % of full scale, a small sensor at high ISO."""

    gain: tuple[float, float] = (2.5e-4, 2.5e-3)
    read_noise: tuple[float, float] = (5e-4, 5e-3)

    def __post_init__(self):
        object.__setattr__(self, "gain", _check_range("gain", self.gain, *LIMITS["gain"]))
        object.__setattr__(self, "read_noise", _check_range("read-noise", self.read_noise, *LIMITS["read_noise"]))


def seed_for(seed: int, rel: Path | str) -> int:
    """A 63-bit seed from a base seed and a relative path (sha256, stable across runs
    and machines), so an image's parameters depend on nothing else in the batch."""
    key = f"{int(seed)}:{Path(rel).as_posix()}".encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "big") >> 1


def _uniform(rng: tuple[float, float], generator: torch.Generator, n: int | None = None):
    lo, hi = rng
    u = torch.rand(() if n is None else (n, 1, 1, 1), generator=generator, dtype=torch.float64)
    value = lo + (hi - lo) * u
    return value.item() if n is None else value


def _log_uniform(rng: tuple[float, float], generator: torch.Generator, n: int | None = None):
    lo, hi = rng
    if lo == 0 or lo == hi:  # no log of 0; a fixed value still takes one draw
        return _uniform(rng, generator, n)
    value = _uniform((math.log(lo), math.log(hi)), generator, n)
    return math.exp(value) if n is None else torch.exp(value)


def sample_lv_params(ranges: LvRanges, generator: torch.Generator) -> LvParams:
    """Draw alpha, beta, gamma (in that order) uniformly from ``ranges``."""
    return LvParams(alpha=_uniform(ranges.alpha, generator), beta=_uniform(ranges.beta, generator),
                    gamma=_uniform(ranges.gamma, generator))


def sample_noise_params(ranges: NoiseRanges, generator: torch.Generator) -> NoiseParams:
    """Draw gain, then read noise, each log-uniformly from ``ranges``."""
    return NoiseParams(gain=_log_uniform(ranges.gain, generator),
                       read_noise=_log_uniform(ranges.read_noise, generator))


def random_pair(high: torch.Tensor, generator: torch.Generator, *, mode: str = "lv",
                ranges: LvRanges = LvRanges(), factor: float = 0.5,
                noise: NoiseRanges | None = None) -> torch.Tensor:
    """A dark version of a batch for on-the-fly training pairs.

    high: Nx3xHxW in [0, 1] on any device. ``generator`` is a CPU generator: the
    parameters (one set per image) are drawn on the CPU and moved to ``high``'s
    device, the noise pixels come from a generator on that device seeded from it.
    Returns the low-light batch, same shape, device and dtype.
    """
    _check_mode(mode)
    n = high.shape[0]
    as_param = lambda t: t.to(device=high.device, dtype=high.dtype)  # noqa: E731
    if mode == "lv":
        low = lv_darken(high, as_param(_uniform(ranges.alpha, generator, n)),
                        as_param(_uniform(ranges.beta, generator, n)),
                        as_param(_uniform(ranges.gamma, generator, n)))
    else:
        low = scale_darken(high, factor)
    if noise is not None:
        gain = as_param(_log_uniform(noise.gain, generator, n))
        read = as_param(_log_uniform(noise.read_noise, generator, n))
        noise_gen = torch.Generator(device=high.device)
        noise_gen.manual_seed(int(torch.randint(2**62, (), generator=generator)))
        low = add_sensor_noise(low, gain, read, noise_gen)
    return low


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise LldiffError(f"unknown darkening mode {mode!r}; allowed: {', '.join(MODES)}")


# --- folders: darken_folder, the manifest, rebuild ---------------------------------


@dataclass(frozen=True)
class DarkenSettings:
    """What ``lldiff darken`` does to each image (everything but the file handling)."""

    mode: str = "lv"
    lv: LvRanges = field(default_factory=LvRanges)
    factor: float = 0.5
    progressive: bool = False
    steps: int = 10
    noise: NoiseRanges | None = None
    seed: int = 0

    def __post_init__(self):
        _check_mode(self.mode)
        problem = _value_problem("factor", self.factor)
        if problem:
            raise LldiffError(problem)
        if self.progressive and not 1 <= self.steps <= 999:
            raise LldiffError(f"steps {self.steps} is not allowed: need 1 <= steps <= 999")


def make_record(settings: DarkenSettings, rel: Path, ext: str) -> dict:
    """The manifest record of one input: every parameter drawn, the seeds, the output paths.

    Parameters come from ``seed_for(settings.seed, rel)`` alone: alpha, beta, gamma
    (lv mode), then gain, read noise; the noise pixels from ``noise.seed``.
    ``ext`` is the output extension (".png", ...).
    """
    image_seed = seed_for(settings.seed, rel)
    gen = torch.Generator().manual_seed(image_seed)
    if settings.mode == "lv":
        params = asdict(sample_lv_params(settings.lv, gen))
    else:
        params = {"factor": float(settings.factor)}
    noise = None
    if settings.noise is not None:
        noise = asdict(sample_noise_params(settings.noise, gen))
        noise["seed"] = seed_for(image_seed, "noise")
    src = Path(rel)
    out = src.with_suffix(ext).as_posix()
    steps = []
    if settings.progressive:
        width = max(2, len(str(settings.steps)))
        steps = [(Path("steps") / src.parent / f"{src.stem}_t{t:0{width}d}{ext}").as_posix()
                 for t in range(1, settings.steps + 1)]
    return {"source": src.as_posix(), "low": f"low/{out}", "high": f"high/{out}",
            "steps": steps, "mode": settings.mode, "params": params, "noise": noise,
            "seed": int(settings.seed), "image_seed": image_seed}


def render(image: Image, record: dict) -> dict[str, torch.Tensor]:
    """Apply a manifest record to a decoded source: {relative output path: 1xCxHxW}.

    The same function serves a first run and a rebuild, so both give the same pixels.
    Steps are the noise-free chain; its last step is the low image before noise. A greyscale
    source is darkened as one channel (C = 1), so its sensor noise is a mono sensor's.
    """
    x, p = (image.rgb[:, :1] if image.grey else image.rgb), record["params"]
    alpha, beta, gamma = ((p["alpha"], p["beta"], p["gamma"]) if record["mode"] == "lv"
                          else (1.0, p["factor"], 1.0))  # dimming is Lv with gamma = 1
    results = {record["high"]: x}
    if record["steps"]:
        chain = progressive_darken(x, alpha, beta, gamma, len(record["steps"]))
        results.update(zip(record["steps"], chain))
        low = chain[-1]
    elif record["mode"] == "lv":
        low = lv_darken(x, alpha, beta, gamma)
    else:
        low = scale_darken(x, beta)
    if record["noise"] is not None:
        n = record["noise"]
        gen = torch.Generator().manual_seed(int(n["seed"]))
        low = add_sensor_noise(low, n["gain"], n["read_noise"], gen)
    results[record["low"]] = low
    return results


def read_manifest(path: Path, *, torn_end_ok: bool = False) -> dict[str, dict]:
    """Records of a manifest by source path, each checked; a later record for a source replaces
    an earlier one; a last line cut short is an error unless ``torn_end_ok`` (see :func:`_numbered_records`)."""
    return {source: record for source, (_, record) in _numbered_records(path, torn_end_ok).items()}


def _numbered_records(path: Path, torn_end_ok: bool = False) -> dict[str, tuple[int, dict]]:
    """(line number, record) of a manifest by source path, each record checked (:func:`_record_problem`).

    A later record for a source replaces an earlier one (a redone image's record is appended).
    A last line that is not JSON is an error naming it, unless ``torn_end_ok``: a run resuming
    its own manifest drops the line its killed predecessor was appending, and redoes that image.
    """
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise LldiffError(f"cannot read manifest {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise LldiffError(f"{path} is not a manifest: a binary file, not lines of JSON text") from None
    records = {}
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines) and torn_end_ok:
                break
            if number == len(lines):
                raise LldiffError(f"{path} line {number} is cut short (a run killed while writing it?) "
                                  "or not a manifest record; remove it to replay the others") from None
            raise LldiffError(f"{path} line {number} is not a manifest record") from None
        problem = _record_problem(record)
        if problem:
            raise LldiffError(f"{path} line {number}: {problem}")
        records[record["source"]] = (number, record)
    return records


def manifest_records(path: Path) -> list[dict]:
    """The records of the manifest at ``path`` to replay (:func:`read_manifest`): none, or two
    that would write one file (the later would silently replace the other's), is an error."""
    numbered = _numbered_records(path)
    if not numbered:
        raise LldiffError(f"manifest {path} has no records")
    writers: dict[PurePosixPath, int] = {}
    for number, record in sorted(numbered.values(), key=lambda item: item[0]):
        names = [PurePosixPath(n) for n in (record["low"], record["high"], *record["steps"])]  # low//a is low/a
        twice = next((n for n in names if names.count(n) > 1), None)
        if twice is not None:
            raise LldiffError(f"{path} line {number} writes {twice} twice")
        for name in names:
            other = writers.setdefault(name, number)
            if other != number:
                raise LldiffError(f"{path} line {other} and line {number} would both write {name}: "
                                  "one would replace the other; drop or rename one of them")
    return [record for _, record in numbered.values()]


# What :func:`render` and the writer read from a record, by key and type.
_RECORD_FIELDS = {"source": str, "low": str, "high": str, "steps": list, "mode": str, "params": dict}


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _record_problem(record) -> str | None:
    """Why a manifest record cannot be replayed, or None. Its parameters must be allowed
    values (LIMITS), so that no image comes out white, black or NaN; its paths must stay
    inside the input and output folders: a record naming ../x or /x is refused, not followed."""
    if not isinstance(record, dict):
        return "not a JSON object"
    for key, kind in _RECORD_FIELDS.items():
        if not isinstance(record.get(key), kind):
            return f"{key!r} is missing or not a {kind.__name__}"
    if record["mode"] not in ("lv", "scale"):
        return f"unknown mode {record['mode']!r}; allowed: lv, scale"
    needed = ("alpha", "beta", "gamma") if record["mode"] == "lv" else ("factor",)
    missing = [key for key in needed if not _is_number(record["params"].get(key))]
    if missing:
        return f"params lack {', '.join(missing)}"
    noise = record.get("noise", "missing")
    if noise is not None and not (isinstance(noise, dict) and all(
            _is_number(noise.get(key)) for key in ("gain", "read_noise", "seed"))):
        return "'noise' must be null or hold numbers gain, read_noise and seed"
    values = {**{key: record["params"][key] for key in needed},
              **({} if noise is None else {key: noise[key] for key in ("gain", "read_noise")})}
    problem = next(filter(None, (_value_problem(key, value) for key, value in values.items())), None)
    if problem:
        return problem
    if noise is not None and not (isinstance(noise["seed"], int) and 0 <= noise["seed"] < 2**64):
        return f"noise seed {noise['seed']!r} is not allowed: need a whole number in [0, 2**64)"
    for name in (record["source"], record["low"], record["high"], *record["steps"]):
        parts = PurePosixPath(name).parts if isinstance(name, str) else ()
        if not parts or parts[0] == "/" or ".." in parts:
            return f"{name!r} is not a relative path inside the folder"
    return None


class _Manifest:
    """OUT/manifest.jsonl, kept truthful while a batch runs.

    A record is appended only after all files of its image are in place, so a killed
    run never lists an image it did not finish. At the start and the end the file is
    rewritten atomically, one record per source sorted by source: records of skipped
    images stay, a redone image's new record replaces its old one.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self.records = read_manifest(self.path, torn_end_ok=True) if self.path.exists() else {}
        self._compact()
        self._fh = open(self.path, "a", encoding="utf-8")

    def has(self, source: str) -> bool:
        return source in self.records

    def add(self, record: dict) -> None:
        self.records[record["source"]] = record
        self._fh.write(json.dumps(record) + "\n")
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()
        self._compact()

    def _compact(self) -> None:
        with atomic_write(self.path) as tmp:
            tmp.write_text("".join(json.dumps(self.records[s]) + "\n" for s in sorted(self.records)),
                           encoding="utf-8")


def plan_records(settings: DarkenSettings, rels: list[Path], fmt: str | None = None) -> list[dict]:
    """The manifest records of a batch (see :func:`make_record`), before any file is
    written: an unknown ``fmt`` or two inputs that would share an output are refused."""
    check_format(fmt)
    refuse_shared_outputs(rels, lambda rel: output_path(Path("low"), rel, fmt))
    return [make_record(settings, rel, output_path(Path(), rel, fmt).suffix) for rel in rels]


@dataclass
class DatasetReport(BatchReport):
    """A darkened dataset's batch report, and the folders of ``out_dir`` its records fill:
    low and high, and steps when they are progressive."""

    folders: list[str] = field(default_factory=list)


def _require_folder(src_dir: Path) -> None:
    if not Path(src_dir).is_dir():
        raise LldiffError(f"input folder does not exist: {src_dir}")


def prepare_dataset(src_dir: Path, out_dir: Path, records: list[dict]) -> Path:
    """Check, before any file is written, that ``records`` can be written from ``src_dir`` into
    ``out_dir``, and create it; returns ``out_dir``. Refused: a missing input folder, and any
    run that would write over a source: an input folder that is (or lies in) a folder the
    records fill, such as OUT/low or OUT/high, or a record's source that a record writes
    (batch.refuse_writing_inputs); then the checks of batch.prepare_output_dir."""
    src_dir, out_dir = Path(src_dir), Path(out_dir)
    _require_folder(src_dir)
    outputs = [PurePosixPath(name) for r in records for name in (r["low"], r["high"], *r["steps"])]
    refuse_writing_inputs(src_dir, [src_dir / r["source"] for r in records],
                          [out_dir / name for name in outputs] + [out_dir / MANIFEST_NAME],
                          sorted({out_dir / name.parts[0] for name in outputs if len(name.parts) > 1}))
    return prepare_output_dir(src_dir, out_dir)


def write_dataset(src_dir: Path, out_dir: Path, records: list[dict], *, overwrite: bool = False,
                  on_start: Callable[[int], None] | None = None,
                  on_item: Callable[[Path, ItemStatus], None] | None = None) -> DatasetReport:
    """Write each record's files from ``src_dir / record["source"]`` into ``out_dir``.

    Checked first by :func:`prepare_dataset`. An input is skipped when its files and its
    manifest record exist (unless ``overwrite``); its record is appended to
    ``out_dir/manifest.jsonl`` only after all its files are in place. Bad inputs (and a
    folder where an output goes) are reported in the DatasetReport. ``on_start`` and
    ``on_item``: see batch.run_batch; ``on_start`` is called once every check has passed.
    """
    src_dir = Path(src_dir)
    out_dir = prepare_dataset(src_dir, out_dir, records)
    by_rel = {Path(r["source"]): r for r in records}
    manifest = _Manifest(out_dir / MANIFEST_NAME)
    try:
        def outputs(rel: Path) -> list[Path]:
            r = by_rel[rel]
            return [out_dir / p for p in (r["low"], r["high"], *r["steps"])]

        def process(rel: Path, image: Image) -> None:
            record = by_rel[rel]
            for name, tensor in render(image, record).items():
                write_like(out_dir / name, tensor, image)
            manifest.add(record)

        # The record counts as an output: an image whose files exist but whose record
        # does not (run killed in between) is redone.
        report = run_batch(src_dir, list(by_rel), outputs=outputs, process=process,
                           recorded=lambda rel: manifest.has(by_rel[rel]["source"]),
                           overwrite=overwrite, on_start=on_start, on_item=on_item)
    finally:
        manifest.close()
    folders = ["low", "high"] + ["steps"] * any(r["steps"] for r in records)
    return DatasetReport(**vars(report), folders=folders)


def darken_folder(in_path: Path, out_dir: Path, settings: DarkenSettings, *,
                  rels: list[Path] | None = None, recursive: bool = False,
                  fmt: str | None = None, overwrite: bool = False,
                  on_start: Callable[[int], None] | None = None,
                  on_item: Callable[[Path, ItemStatus], None] | None = None) -> DatasetReport:
    """Darken every image of ``in_path`` (a folder, or one image) into ``out_dir``; returns the
    batch report, with the files of other types it left out (batch.command_inputs).

    Writes ``low/REL`` (dark), ``high/REL`` (the source as read, in the output format),
    ``steps/REL_DIR/STEM_tNN.EXT`` for t = 1..T when progressive, and ``manifest.jsonl``.
    16-bit sources stay 16-bit where the format allows; alpha is kept. ``rels`` (relative to
    the folder ``in_path``) darkens those images instead of the folder's. ``on_start`` /
    ``on_item``: see :func:`write_dataset`.
    """
    inputs = command_inputs(in_path, out_dir, recursive) if rels is None else Inputs(Path(in_path), rels)
    records = plan_records(settings, inputs.files, fmt)
    report = write_dataset(inputs.folder, out_dir, records, overwrite=overwrite, on_start=on_start, on_item=on_item)
    report.left_out = inputs.left_out
    return report


def rebuild_from_manifest(manifest: Path, src_dir: Path, out_dir: Path, *,
                          overwrite: bool = False,
                          on_start: Callable[[int], None] | None = None,
                          on_item: Callable[[Path, ItemStatus], None] | None = None) -> DatasetReport:
    """Rebuild the dataset a manifest describes from the same sources, pixel for pixel.

    Every record is replayed with its own parameters and seeds (the ranges and the
    options of the first run are not needed); ``out_dir`` gets its own manifest.
    """
    _require_folder(src_dir)  # before the manifest: the sources are the first thing to check
    return write_dataset(src_dir, out_dir, manifest_records(manifest), overwrite=overwrite,
                         on_start=on_start, on_item=on_item)
