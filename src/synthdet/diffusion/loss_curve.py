"""The loss curve of a training run: a TSV for the DVC plot, window means for MLflow."""

from __future__ import annotations

from collections.abc import Callable

from synthdet.core import tracking

StepCallback = Callable[[int, float], None]  # (1-based step, loss)


class LossCurve:
    """Per-step losses for the TSV plot; MLflow gets the mean of every `log_every` steps.

    One MLflow call per step would cost about as much as a training step of the tiny model.
    """

    def __init__(
        self,
        run: tracking.StageRun | None,
        log_every: int = 10,
        on_step: Callable[[int, str, float], None] | None = None,
    ) -> None:
        """`run`: the MLflow run (None: no MLflow, as in the checkpoint recipe); `on_step` is
        called with (curve step, phase, loss) after every step, e.g. for progress and saving."""
        self.run, self.log_every, self.on_step = run, log_every, on_step
        self.rows: list[tuple[int, str, float]] = []

    def recorder(self, phase: str, first_step: int = 1) -> StepCallback:
        """A training-loop callback that numbers its steps from `first_step` in the curve."""

        def on_step(step: int, loss: float) -> None:
            self.rows.append((first_step + step - 1, phase, loss))
            if self.on_step is not None:
                self.on_step(first_step + step - 1, phase, loss)
            if self.run is not None and step % self.log_every == 0:
                window = [row[2] for row in self.rows[-self.log_every :]]
                self.run.log_metrics(
                    {f"{phase}_loss": sum(window) / len(window)}, step=first_step + step - 1
                )

        return on_step

    def _tail_mean(self, losses: list[float]) -> float:
        # Mean of 10% of the steps: single diffusion losses are very noisy.
        tail = losses[-max(1, len(losses) // 10) :]
        return sum(tail) / len(tail)

    def initial(self, phase: str) -> float:
        """Mean loss of the first 10% of the phase's steps."""
        return self._tail_mean(self.losses(phase)[::-1])

    def final(self, phase: str) -> float | None:
        """Mean loss of the last 10% of the phase's steps (None: the phase did not train)."""
        losses = self.losses(phase)
        return self._tail_mean(losses) if losses else None

    def losses(self, phase: str) -> list[float]:
        return [loss for _, row_phase, loss in self.rows if row_phase == phase]

    def extend_tsv(self, text: str) -> None:
        """Append the rows of a `tsv()` text: the curve of the earlier runs this one continues.

        Raises ValueError on a row that is not `step<TAB>phase<TAB>loss`."""
        for line in text.splitlines()[1:]:
            step, phase, loss = line.split("\t")
            self.rows.append((int(step), phase, float(loss)))

    def tsv(self) -> str:
        lines = ["step\tphase\tloss", *(f"{s}\t{p}\t{loss:.6f}" for s, p, loss in self.rows)]
        return "\n".join(lines) + "\n"
