"""Training the encoder on simulations drawn on the fly (pure torch)."""

from __future__ import annotations

__all__ = [
    "EncoderTrainer",
    "load_run_config",
    "TrainingConfig",
    "TrainingRun",
    "add_autoencoder",
    "check_initial_model",
    "copy_autoencoder",
    "train",
]

import dataclasses
import json
import math
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors.torch import load_file, save_file

from ..io import BlissModel, atomic_write_path
from ..network import AutoencoderConfig, BlissEncoder, EncoderConfig, make_tile_truth, prepare_inputs
from ..runtime import check_backbone_precision, resolve_backbone_dtype, resolve_device
from ..simulation import ImageSimulator, PriorConfig, SimulatedBatch, SimulatorConfig
from ..survey import SurveyConditions
from ._autoencoder_training import AutoencoderTrainingConfig, train_autoencoder
from ._schedule import check_optimization_settings, warmup_cosine_factor


@dataclasses.dataclass(frozen=True)
class TrainingConfig:
    """Optimization settings.

    Attributes
    ----------
    seed
        Seed of the network initialization and of the training simulations.
    validation_seed
        Seed of the fixed held-out validation images (must differ from ``seed``).
    n_steps
        Optimizer steps (each on a fresh simulated batch).
    batch_size
        Images per step.
    learning_rate
        Peak Adam learning rate (linear warm-up, then cosine decay to 5% of it).
    warmup_steps
        Steps of linear warm-up.
    grad_clip_norm
        Gradient-norm clipping threshold.
    detection_loss_weight
        Weight of the detection factor's term in the training loss (the
        validation loss stays unweighted).  Each factor's term is the
        log-likelihood of its own conditional, so any positive weight leaves
        the best posterior unchanged; with a finite network, a weight above 1
        spends more of it on the detection decisions (see ``doc/lsst.meas.extensions.bliss/encoder.rst``).
    validation_images
        Size of the validation set.
    validation_every, checkpoint_every, log_every
        Intervals in steps.
    max_minutes
        Optional wall-time budget; training stops at the end of the step
        that exceeds it, saving a checkpoint and the model.
    device
        ``"auto"``, ``"cpu"`` or ``"cuda"``.
    backbone_precision
        Arithmetic of the encoder's backbone in the training steps (see
        `resolve_backbone_dtype`): ``"float32"``, ``"bfloat16"``, or ``"auto"``
        (bfloat16 on a CPU that computes it natively, float32 elsewhere).
        Mixed precision: the weights, their optimizer state, the head and the
        loss stay float32, and validation runs in float32.  On such a CPU the
        bfloat16 backbone makes a training step about 1.4 times faster (see
        ``doc/lsst.meas.extensions.bliss/training.rst``).
    overlap_simulation
        Simulate the next batches in a background thread while the network
        trains on the current one (on a CPU, each with its share of the
        torch threads).  The batches are the same as without it, and a
        resumed run continues with the batch an uninterrupted run would have
        drawn; the weights differ only by the rounding of a different thread
        count.
    """

    seed: int = 0
    validation_seed: int = 1_000_003
    n_steps: int = 10_000
    batch_size: int = 32
    learning_rate: float = 1e-3
    warmup_steps: int = 200
    grad_clip_norm: float = 10.0
    detection_loss_weight: float = 1.0
    validation_images: int = 256
    validation_every: int = 500
    checkpoint_every: int = 500
    log_every: int = 50
    max_minutes: float | None = None
    device: str = "auto"
    backbone_precision: str = "float32"
    overlap_simulation: bool = False

    def __post_init__(self) -> None:
        check_backbone_precision(self.backbone_precision)
        counts = (
            "n_steps",
            "batch_size",
            "validation_images",
            "validation_every",
            "checkpoint_every",
            "log_every",
        )
        check_optimization_settings(self, counts, "images")
        if not (self.detection_loss_weight > 0 and math.isfinite(self.detection_loss_weight)):
            raise ValueError(
                f"detection_loss_weight={self.detection_loss_weight} is out of range; "
                "it must be > 0 and finite."
            )


@dataclasses.dataclass(frozen=True)
class TrainingRun:
    """Everything that defines a training run (the content of a ``bliss-train`` config file).

    ``band_conditions`` lists the nominal conditions of every band the run trains one encoder for
    (each image draws its band among them); empty: ``conditions`` alone.  ``conditions`` is the
    model's nominal conditions, one of them.
    """

    conditions: SurveyConditions
    prior: PriorConfig = dataclasses.field(default_factory=PriorConfig)
    simulator: SimulatorConfig = dataclasses.field(
        default_factory=lambda: SimulatorConfig(psf_fwhm_range_arcsec=(0.6, 1.2))
    )
    encoder: EncoderConfig = dataclasses.field(default_factory=EncoderConfig)
    training: TrainingConfig = dataclasses.field(default_factory=TrainingConfig)
    autoencoder: AutoencoderConfig = dataclasses.field(default_factory=AutoencoderConfig)
    autoencoder_training: AutoencoderTrainingConfig | None = None
    band_conditions: tuple[SurveyConditions, ...] = ()

    def __post_init__(self) -> None:
        if self.band_conditions and self.conditions not in self.band_conditions:
            raise ValueError(
                f"conditions.band={self.conditions.band!r} is not among conditions.bands "
                f"{[item.band for item in self.band_conditions]}; list it there or pick one of those."
            )
        if self.simulator.tile_size != self.encoder.tile_size:
            raise ValueError(
                f"simulator.tile_size={self.simulator.tile_size} differs from encoder.tile_size="
                f"{self.encoder.tile_size}; they must agree."
            )
        if self.simulator.max_sources_per_tile != 1:
            raise ValueError(
                "simulator.max_sources_per_tile must be 1: the encoder's factors model one source."
            )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainingRun:
        """Build from a mapping with optional sections ``conditions`` (``survey``, ``band`` and
        overrides for `SurveyConditions.from_survey`; ``bands``, a list of the survey's bands to
        train one encoder for, the overrides applying to each, ``band`` then being the nominal one,
        by default ``r`` if listed, else the first), ``band_conditions`` (each band's full
        conditions, as `to_dict` writes them), ``prior``, ``simulator``, ``encoder``,
        ``training``, ``autoencoder`` and ``autoencoder_training`` (present: the galaxy
        autoencoder is trained too).

        Raises
        ------
        ValueError
            For unknown sections or fields.
        """
        sections = {"conditions", "prior", "simulator", "encoder", "training", "autoencoder"}
        unknown = set(data) - sections - {"autoencoder_training", "band_conditions"}
        if unknown:
            raise ValueError(f"Unknown training config section(s) {sorted(unknown)}.")
        conditions = dict(data.get("conditions") or {})
        bands, explicit_band = conditions.pop("bands", None), conditions.pop("band", None)
        survey = conditions.pop("survey", "LSST")
        band_conditions: tuple[SurveyConditions, ...] = tuple(
            SurveyConditions.from_dict(dict(item)) for item in data.get("band_conditions") or ()
        )
        if bands is not None:
            if isinstance(bands, str) or not bands or len(set(bands)) != len(bands):
                raise ValueError(
                    f"conditions.bands={bands!r} must be a list of distinct {survey} bands, e.g. [g, r, i]."
                )
            band_conditions = tuple(
                SurveyConditions.from_survey(survey, name, **conditions) for name in bands
            )
        names = [item.band for item in band_conditions]
        band = explicit_band or ("r" if not names or "r" in names else names[0])

        def section(kind: type, name: str, defaults: dict[str, Any] | None = None) -> Any:
            fields = {**(defaults or {}), **(data.get(name) or {})}
            extra = set(fields) - {f.name for f in dataclasses.fields(kind)}
            if extra:
                raise ValueError(f"Unknown field(s) {sorted(extra)} in section '{name}'.")
            return kind.from_dict(fields) if hasattr(kind, "from_dict") else kind(**fields)

        return cls(
            conditions=SurveyConditions.from_survey(survey, band, **conditions),
            prior=section(PriorConfig, "prior"),
            simulator=section(SimulatorConfig, "simulator", {"psf_fwhm_range_arcsec": (0.6, 1.2)}),
            encoder=section(EncoderConfig, "encoder"),
            training=section(TrainingConfig, "training"),
            autoencoder=section(AutoencoderConfig, "autoencoder"),
            autoencoder_training=(
                section(AutoencoderTrainingConfig, "autoencoder_training")
                if "autoencoder_training" in data
                else None
            ),
            band_conditions=band_conditions,
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-serializable representation (round-trips through `from_dict`)."""
        return {
            "conditions": self.conditions.to_dict(),
            "prior": self.prior.to_dict(),
            "simulator": self.simulator.to_dict(),
            "encoder": self.encoder.to_dict(),
            "training": dataclasses.asdict(self.training),
            "autoencoder": self.autoencoder.to_dict(),
            **(
                {}
                if self.autoencoder_training is None
                else {"autoencoder_training": self.autoencoder_training.to_dict()}
            ),
            # Written for runs of several bands only: a single-band run's record is as before.
            **(
                {"band_conditions": [item.to_dict() for item in self.band_conditions]}
                if self.band_conditions
                else {}
            ),
        }

    @property
    def psf_fwhm_range_arcsec(self) -> tuple[float, float]:
        """PSF FWHM range of the training simulations, arcsec."""
        fwhm_range = self.simulator.psf_fwhm_range_arcsec
        fwhm = self.conditions.psf_fwhm_arcsec
        return (fwhm, fwhm) if fwhm_range is None else (float(fwhm_range[0]), float(fwhm_range[1]))


_NOT_DEFINING = ("max_minutes", "device", "overlap_simulation")
"""Training settings that leave what a run computes unchanged (a run may resume with others)."""


class _BatchPrefetcher:
    """Simulates a trainer's batches in a background thread, in the order the trainer would.

    Each batch comes with the state of the simulation generator after it was drawn, so that the
    trainer can record (and checkpoint) the state an uninterrupted sequential run would have.
    """

    def __init__(self, simulate: Callable[[], SimulatedBatch], generator: torch.Generator) -> None:
        self._simulate, self._generator = simulate, generator
        self._queue: queue.Queue[tuple[SimulatedBatch, torch.Tensor] | BaseException] = queue.Queue(maxsize=2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bliss-simulation", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                batch = self._simulate()
                item = (batch, self._generator.get_state())
                while not self._stop.is_set():
                    try:
                        self._queue.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
        except BaseException as err:  # handed to the training thread, which raises it
            self._queue.put(err)

    def next(self) -> tuple[SimulatedBatch, torch.Tensor]:
        item = self._queue.get()
        if isinstance(item, BaseException):
            raise RuntimeError("simulating a training batch failed in the background thread") from item
        return item

    def close(self) -> None:
        self._stop.set()
        while self._thread.is_alive():
            try:  # make room for a put that is waiting
                self._queue.get_nowait()
            except queue.Empty:
                pass
            self._thread.join(timeout=0.1)


class EncoderTrainer:
    """The encoder's training loop: simulation, loss, optimizer, validation and checkpoints.

    `train` drives it; its pieces (`simulate_batch`, `network_step`, `train_step`) are public so
    that ``bliss-bench train`` measures the very steps training takes.

    Parameters
    ----------
    run
        The full training definition.
    output_dir
        Directory for checkpoints.
    log
        Receives progress lines.
    """

    def __init__(self, run: TrainingRun, output_dir: Path, log: Callable[[str], None]) -> None:
        self.run, self.output_dir, self.log = run, output_dir, log
        config = run.training
        self.device = resolve_device(config.device)
        self.backbone_dtype = resolve_backbone_dtype(config.backbone_precision, self.device)
        # oneDNN's native layout: about 15% faster training steps on the CPU (weights and inputs).
        self.memory_format = torch.channels_last if self.device.type == "cpu" else torch.contiguous_format
        torch.manual_seed(config.seed)
        self.encoder = BlissEncoder(run.encoder).to(self.device, memory_format=self.memory_format)
        self.simulator = ImageSimulator(
            run.conditions, run.prior, run.simulator, self.device, band_conditions=run.band_conditions
        )
        self.optimizer = torch.optim.Adam(self.encoder.parameters(), lr=config.learning_rate)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: warmup_cosine_factor(step, config.warmup_steps, config.n_steps)
        )
        self.generator = torch.Generator(device=self.device).manual_seed(config.seed)
        self._prefetcher: _BatchPrefetcher | None = None
        self._consumed_generator_state: torch.Tensor | None = None
        self._threads_before_overlap: int | None = None
        self.step = 0
        self.elapsed_s = 0.0
        self.history: list[dict[str, float]] = []
        self.validation = self._validation_set()

    def _validation_set(self) -> list[SimulatedBatch]:
        config = self.run.training
        generator = torch.Generator(device=self.device).manual_seed(config.validation_seed)
        batches, remaining = [], config.validation_images
        while remaining > 0:
            size = min(config.batch_size, remaining)
            batches.append(self.simulator.sample(size, generator=generator))
            remaining -= size
        return batches

    def _loss(
        self,
        batch: SimulatedBatch,
        weights: dict[str, float] | None = None,
        compute_dtype: torch.dtype = torch.float32,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        pixel_scale = self.run.conditions.pixel_scale_arcsec
        inputs = prepare_inputs(
            batch.image,
            batch.variance,
            batch.mask,
            batch.psf_fwhm_arcsec / pixel_scale,
            input_noise=self.run.encoder.input_noise,
        )
        inputs = dataclasses.replace(
            inputs, tensor=inputs.tensor.contiguous(memory_format=self.memory_format)
        )
        truth = make_tile_truth(self.encoder, batch.truth_tiles, inputs.flux_scale_njy, pixel_scale)
        return self.encoder.loss(inputs, truth, weights, compute_dtype)

    @torch.no_grad()
    def validate(self) -> float:
        self.encoder.eval()
        total, count = 0.0, 0
        for batch in self.validation:
            loss, _ = self._loss(batch)
            total += float(loss) * batch.image.shape[0]
            count += batch.image.shape[0]
        self.encoder.train()
        return total / count

    # Checkpoints: weights and optimizer moments in safetensors, counters and RNG state in JSON.
    def _checkpoint_paths(self) -> tuple[Path, Path]:
        return self.output_dir / "checkpoint.safetensors", self.output_dir / "checkpoint.json"

    def save_checkpoint(self) -> None:
        weights_path, state_path = self._checkpoint_paths()
        tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in self.encoder.state_dict().items()}
        optimizer_state = self.optimizer.state_dict()
        for index, state in optimizer_state["state"].items():
            for key, value in state.items():
                tensors[f"optimizer.{index}.{key}"] = torch.as_tensor(value).detach().cpu().contiguous()
        # While batches are simulated ahead, the state after the last batch trained on (the
        # generator itself is ahead, and in use by the simulation thread).
        generator_state = (
            self.generator.get_state() if self._prefetcher is None else self._consumed_generator_state
        )
        assert generator_state is not None
        tensors["generator_state"] = generator_state.cpu()
        state = {
            "step": self.step,
            "elapsed_s": self.elapsed_s,
            "history": self.history,
            "param_groups": optimizer_state["param_groups"],
            "scheduler": self.scheduler.state_dict(),
            "run": self.run.to_dict(),
        }
        self.output_dir.mkdir(parents=True, exist_ok=True)
        # Both files are complete before either is renamed (the inner block, the weights, first), as
        # before: a failed write leaves the previous pair.
        with atomic_write_path(state_path) as state_temporary:
            state_temporary.write_text(json.dumps(state, indent=1))
            with atomic_write_path(weights_path) as weights_temporary:
                save_file(tensors, str(weights_temporary))

    def load_checkpoint(self) -> None:
        weights_path, state_path = self._checkpoint_paths()
        state = json.loads(state_path.read_text())

        def defining(run: dict[str, Any]) -> dict[str, Any]:
            # The time budget, device and overlap decide when and where, not what, a run computes.
            training = {k: v for k, v in run["training"].items() if k not in _NOT_DEFINING}
            return {**run, "training": training}

        if defining(state["run"]) != defining(json.loads(json.dumps(self.run.to_dict()))):
            raise ValueError(
                f"The checkpoint in {self.output_dir} was written by a different training config; "
                "resume with the same config or use a new output directory."
            )
        tensors = load_file(str(weights_path))
        self.encoder.load_state_dict(
            {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
        )
        optimizer_state: dict[str, Any] = {"state": {}, "param_groups": state["param_groups"]}
        for name, value in tensors.items():
            if name.startswith("optimizer."):
                _, index, key = name.split(".", 2)
                optimizer_state["state"].setdefault(int(index), {})[key] = value.to(self.device)
        for entry in optimizer_state["state"].values():
            entry["step"] = entry["step"].cpu()
        self.optimizer.load_state_dict(optimizer_state)
        self.scheduler.load_state_dict(state["scheduler"])
        self.generator.set_state(tensors["generator_state"])
        self.step, self.elapsed_s, self.history = state["step"], state["elapsed_s"], state["history"]
        self.log(f"resumed from step {self.step} ({self.elapsed_s / 60:.1f} min of training so far)")

    def simulate_batch(self) -> SimulatedBatch:
        """The next training batch of ``training.batch_size`` simulated images."""
        return self.simulator.sample(self.run.training.batch_size, generator=self.generator)

    def network_step(self, batch: SimulatedBatch) -> tuple[torch.Tensor, dict[str, float]]:
        """One optimizer step on ``batch``: loss, backward pass, gradient clipping, update.

        Returns
        -------
        loss, terms
            The weighted loss (a scalar tensor) and its terms per factor.
        """
        config = self.run.training
        loss, terms = self._loss(batch, {"detection": config.detection_loss_weight}, self.backbone_dtype)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.encoder.parameters(), config.grad_clip_norm)
        self.optimizer.step()
        self.scheduler.step()
        return loss, terms

    def train_step(self) -> tuple[torch.Tensor, dict[str, float]]:
        """Simulate a batch and take one optimizer step on it; see `network_step`.

        With ``training.overlap_simulation`` the batch comes from the background thread, which
        starts on the first call and simulates ahead until `stop_overlap`."""
        if not self.run.training.overlap_simulation:
            batch = self.simulate_batch()
        else:
            if self._prefetcher is None:
                self._start_overlap()
            assert self._prefetcher is not None
            batch, self._consumed_generator_state = self._prefetcher.next()
        loss, terms = self.network_step(batch)
        self.step += 1
        return loss, terms

    def _start_overlap(self) -> None:
        if self.device.type == "cpu" and torch.get_num_threads() > 1:
            # Two loops on one pool of threads wait on each other; each gets its own share.
            self._threads_before_overlap = torch.get_num_threads()
            torch.set_num_threads(self._threads_before_overlap - 1)
        self._consumed_generator_state = self.generator.get_state()
        self._prefetcher = _BatchPrefetcher(self.simulate_batch, self.generator)

    def stop_overlap(self) -> None:
        """Stop the background simulation (if running) and rewind the generator to the first batch not
        yet trained on, as a sequential run would have it: `simulate_batch` then draws that batch."""
        if self._prefetcher is None:
            return
        self._prefetcher.close()
        self._prefetcher = None
        assert self._consumed_generator_state is not None
        self.generator.set_state(self._consumed_generator_state)
        if self._threads_before_overlap is not None:
            torch.set_num_threads(self._threads_before_overlap)
            self._threads_before_overlap = None

    def fit(self) -> None:
        """Train until ``training.n_steps`` (or ``training.max_minutes``), validating, logging and
        checkpointing as configured."""
        try:
            self._fit()
        finally:
            self.stop_overlap()

    def _fit(self) -> None:
        config = self.run.training
        self.encoder.train()
        window_start, window_images, window_loss = time.perf_counter(), 0, 0.0
        while self.step < config.n_steps:
            start = time.perf_counter()
            loss, terms = self.train_step()
            window_images += config.batch_size
            window_loss += loss.item()
            if self.step % config.log_every == 0 or self.step == config.n_steps:
                rate = window_images / (time.perf_counter() - window_start)
                steps = max(1, window_images // config.batch_size)
                self.log(
                    f"step {self.step}/{config.n_steps} loss {window_loss / steps:.3f} "
                    f"lr {self.scheduler.get_last_lr()[0]:.2e} {rate:.1f} images/s "
                    f"elapsed {self.elapsed_s / 60:.1f} min"
                )
                window_start, window_images, window_loss = time.perf_counter(), 0, 0.0
            running_s = self.elapsed_s + time.perf_counter() - start
            out_of_time = config.max_minutes is not None and running_s > 60 * config.max_minutes
            if self.step % config.validation_every == 0 or self.step == config.n_steps or out_of_time:
                validation_loss = self.validate()
                self.history.append(
                    {
                        "step": self.step,
                        "train_loss": loss.item(),
                        "validation_loss": validation_loss,
                        "elapsed_s": self.elapsed_s,
                        **{f"train_{k}": v for k, v in terms.items()},
                    }
                )
                self.log(f"step {self.step}: validation loss {validation_loss:.3f}")
            if self.step % config.checkpoint_every == 0 or self.step == config.n_steps or out_of_time:
                self.save_checkpoint()
            # Wall time of whole steps, validation and checkpoints included.
            self.elapsed_s += time.perf_counter() - start
            if out_of_time:
                self.log(f"stopping at step {self.step}: max_minutes={config.max_minutes} reached")
                break


def check_initial_model(run: TrainingRun, model: BlissModel) -> None:
    """Check that a package can start the training of ``run`` (see `train`'s ``initial_model``).

    Raises
    ------
    ValueError
        If its encoder architecture or survey conditions differ from the run's.
    """
    if (
        model.encoder.config != run.encoder
        or model.conditions != run.conditions
        or model.band_conditions != run.band_conditions
    ):
        raise ValueError(
            "The initial model's encoder architecture or survey conditions differ from the training "
            "config's; fine-tuning needs the same encoder section and conditions."
        )


def train(
    run: TrainingRun,
    output_dir: str | Path,
    resume: bool = False,
    log: Callable[[str], None] = print,
    command: str | None = None,
    initial_model: BlissModel | None = None,
) -> BlissModel:
    """Train an encoder and write ``model.safetensors`` to ``output_dir``.

    Parameters
    ----------
    run
        The full training definition.
    output_dir
        Directory for checkpoints and the final model.
    resume
        Continue from the checkpoint in ``output_dir`` (same config required).
    log
        Receives progress lines.
    command
        The command line, recorded in the model's training summary.
    initial_model
        Start from this package's encoder weights instead of a random
        initialization (fine-tuning, e.g. on a changed prior); its
        architecture must be ``run.encoder`` and its survey conditions
        ``run.conditions``.  Its training summary is kept in the new one
        (``initialized_from``), so the total training is on record.

    Returns
    -------
    model
        The trained model, also saved as ``output_dir / "model.safetensors"``.

    Raises
    ------
    ValueError
        If ``initial_model`` has another architecture or other survey conditions.
    """
    output_dir = Path(output_dir)
    trainer = EncoderTrainer(run, output_dir, log)
    if initial_model is not None:
        check_initial_model(run, initial_model)
        trainer.encoder.load_state_dict(initial_model.encoder.state_dict())
    if resume:
        if not trainer._checkpoint_paths()[0].exists():
            raise FileNotFoundError(f"No checkpoint to resume from in {output_dir}.")
        trainer.load_checkpoint()
    log(
        f"training on {trainer.device}: {sum(p.numel() for p in trainer.encoder.parameters())} parameters, "
        f"{run.training.n_steps} steps of {run.training.batch_size} images "
        f"{run.simulator.image_height}x{run.simulator.image_width}"
    )
    trainer.fit()
    summary = {
        "command": command,
        "seed": run.training.seed,
        "validation_seed": run.training.validation_seed,
        "steps": trainer.step,
        "images_seen": trainer.step * run.training.batch_size,
        "wall_time_s": trainer.elapsed_s,
        "device": str(trainer.device),
        "torch_threads": torch.get_num_threads(),
        "final_validation_loss": trainer.history[-1]["validation_loss"] if trainer.history else None,
        "history": trainer.history,
        "run": run.to_dict(),
    }
    if initial_model is not None:
        summary["initialized_from"] = {k: v for k, v in initial_model.training.items() if k != "autoencoder"}
    trainer.encoder.eval()
    # The returned encoder computes exactly as the saved and reloaded one.
    encoder = trainer.encoder.cpu().to(memory_format=torch.contiguous_format)
    model = BlissModel(
        encoder, run.conditions, run.prior, run.simulator, summary, band_conditions=run.band_conditions
    )
    if run.autoencoder_training is not None:
        model = add_autoencoder(model, run, log=log, command=command)
    model.save(output_dir / "model.safetensors")
    return model


def add_autoencoder(
    model: BlissModel, run: TrainingRun, log: Callable[[str], None] = print, command: str | None = None
) -> BlissModel:
    """Train a galaxy autoencoder for a model package and return the package with it.

    Parameters
    ----------
    model
        The package (its encoder and training summary are kept).
    run
        Training definition; its ``autoencoder`` and ``autoencoder_training``
        sections are used, and its conditions, prior and simulator must be
        the model's.
    log
        Receives progress lines.
    command
        The command line, recorded in the autoencoder's training summary.

    Raises
    ------
    ValueError
        If the run has no ``autoencoder_training`` section or was not the
        model's training run (different conditions, prior or simulator).
    """
    if run.autoencoder_training is None:
        raise ValueError("The training config has no 'autoencoder_training' section; add one to train it.")
    differing = _differing_sections(run, model)
    if differing:
        raise ValueError(
            f"The training config's {', '.join(differing)} differ from the model's; the autoencoder "
            "must be trained for the model's own survey conditions and prior. Use the model's config file."
        )
    autoencoder, summary = train_autoencoder(
        run.conditions,
        run.prior,
        run.psf_fwhm_range_arcsec,
        run.autoencoder,
        run.autoencoder_training,
        log=log,
    )
    training = {**model.training, "autoencoder": {"command": command, **summary}}
    return dataclasses.replace(model, training=training, autoencoder=autoencoder)


def _differing_sections(
    first: TrainingRun | BlissModel, second: BlissModel, ignore_added_populations: bool = False
) -> list[str]:
    """Names of the survey sections (conditions, prior, simulator) in which two runs or packages differ;
    with ``ignore_added_populations``, priors that differ only in their added populations
    (`PriorConfig.poisson_field`) and simulators that differ only in their masked regions
    (`SimulatorConfig.masked_regions_per_image`) count as equal."""

    def section(owner: TrainingRun | BlissModel, name: str) -> dict[str, Any]:
        value = getattr(owner, name)
        if ignore_added_populations and name == "prior":
            value = value.poisson_field()
        elif ignore_added_populations and name == "simulator":
            value = dataclasses.replace(value, masked_regions_per_image=0.0)
        return value.to_dict()

    return [
        name for name in ("conditions", "prior", "simulator") if section(first, name) != section(second, name)
    ]


def copy_autoencoder(model: BlissModel, source: BlissModel, source_name: str) -> BlissModel:
    """Return the package with the galaxy autoencoder of another package trained for the same survey.

    The autoencoder learns isolated galaxies drawn from the prior under the
    survey's PSF range; it does not depend on the encoder, so a retrained
    encoder can keep an autoencoder already trained for the same conditions,
    prior and simulator.  Priors that differ only in their added populations
    of companions and bright stars (`PriorConfig.poisson_field`) draw the
    same single galaxies and count as the same, and so do simulators that
    differ only in their masked regions, which the autoencoder's isolated
    stamps do not use.  The copied training summary records where it came
    from.

    Parameters
    ----------
    model
        The package that receives the autoencoder (its encoder and training
        summary are kept).
    source
        The package whose autoencoder is copied.
    source_name
        Where ``source`` was read from, recorded in the summary.

    Raises
    ------
    MissingAutoencoderError
        If ``source`` has no autoencoder.
    ValueError
        If the two packages were trained for different conditions, prior or
        simulator settings.
    """
    autoencoder = source.require_autoencoder(f"copying the autoencoder of {source_name}")
    # The autoencoder learns single galaxies, which companions do not change (PriorConfig).
    differing = _differing_sections(source, model, ignore_added_populations=True)
    if differing:
        raise ValueError(
            f"{source_name} was trained for different {', '.join(differing)} than the model; its "
            "autoencoder does not apply. Train one with --autoencoder-only instead."
        )
    summary = {**source.training.get("autoencoder", {}), "copied_from": source_name}
    return dataclasses.replace(
        model, training={**model.training, "autoencoder": summary}, autoencoder=autoencoder
    )


def load_run_config(path: Path) -> TrainingRun:
    """Read a YAML or JSON training config file.

    Raises
    ------
    ValueError
        If the file cannot be parsed or its content is not a valid training config.
    """
    if not path.is_file():
        raise ValueError(f"Training config {path} does not exist.")
    text = path.read_text()
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as err:
        raise ValueError(f"Cannot parse training config {path}: {err}") from err
    if not isinstance(data, dict):
        raise ValueError(f"Training config {path} must be a mapping of sections; got {type(data).__name__}.")
    return TrainingRun.from_dict(data)
