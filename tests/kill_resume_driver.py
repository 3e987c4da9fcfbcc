"""Run by tests/test_kill_resume.py in a subprocess: a small ``fundl.experiment.run`` that can
kill itself with SIGKILL in the middle of one epoch's checkpoint write.

    python tests/kill_resume_driver.py OUT [--resume] [--kill-in-save E --at {create,finalize}]

``--at create``: just after Orbax made the temporary directory of epoch ``E``'s checkpoint
(nothing of it written yet); ``--at finalize``: every file of it written, just before the
rename that commits it. The hook is Orbax's own (``AtomicRenameTemporaryPath``): fundl's
checkpoint code runs unchanged. Data, model and optimizer are fixed, so two runs into two
directories must end with bitwise-equal checkpoints.
"""


def _kill_in_save(epoch: int, at: str) -> None:
    """Patch Orbax so that the process SIGKILLs itself at ``at`` of epoch ``epoch``'s save."""
    import os
    import signal

    from orbax.checkpoint._src.path import atomicity

    cls = atomicity.AtomicRenameTemporaryPath
    real = getattr(cls, at)

    async def hooked(self):
        if self.get_final().name != str(epoch):  # another epoch, or an item inside a step
            return await real(self)
        if at == "create":
            await real(self)
        print(f"driver: SIGKILL during the checkpoint write of epoch {epoch} ({at})", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)

    setattr(cls, at, hooked)


def main():  # everything inside: importing this module (pytest --doctest-modules) runs nothing
    import argparse

    import numpy as np
    import optax

    from fundl import models
    from fundl.experiment import run

    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--kill-in-save", type=int, default=None, metavar="E")
    p.add_argument("--at", choices=("create", "finalize"), default="finalize")
    args = p.parse_args()
    if args.kill_in_save is not None:
        _kill_in_save(args.kill_in_save, args.at)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (96, 8, 8, 1), dtype=np.uint8)
    y = rng.integers(0, 10, 96).astype(np.int32)
    run(models.mlp([64, 10], name="mlp"), optax.sgd(0.05, momentum=0.9), (x, y), (x[:32], y[:32]),
        out=args.out, epochs=3, batch_size=16, seed=3, resume=args.resume, progress=False,
        transform=lambda a: np.asarray(a, np.float32) / 255.0, config={"driver": 1})


if __name__ == "__main__":
    main()
