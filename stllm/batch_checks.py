"""Input checks and slot counts of a batch, resolved with one host synchronisation.

On a GPU every ``.any()``, ``int(t.sum())``, ``nonzero`` or boolean-mask index in a forward stops
the host until the device has caught up, so the kernels of the next step cannot be queued while
this one runs. The forward therefore computes each check as a 0-d tensor on the batch's device
(True: the input is bad) and each count it needs as a 0-d integer tensor, and :meth:`DeviceChecks.resolve`
copies all of them to the host in one transfer. A message may be a callable: it runs only on the
error path, where the extra synchronisations that name the bad values cost nothing that matters.
Positions of slot tokens are then found from the known counts without a further synchronisation
(:func:`flat_positions`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

Message = str | Callable[[], str]


class DeviceChecks:
    """Collects device-side failure flags and counts; :meth:`resolve` reads them all at once."""

    def __init__(self) -> None:
        self._values: list[torch.Tensor] = []
        self._messages: list[Message | None] = []  # None: a count, not a check

    def fail_if(self, flag: torch.Tensor | bool, message: Message) -> None:
        """Raise ``ValueError(message)`` at :meth:`resolve` if ``flag`` is true."""
        self._values.append(torch.as_tensor(flag).reshape(()).long())
        self._messages.append(message)

    def count(self, value: torch.Tensor) -> int:
        """Register a 0-d integer tensor; its host value is ``resolve()[handle]``."""
        self._values.append(value.reshape(()).long())
        self._messages.append(None)
        return len(self._values) - 1

    def resolve(self) -> list[int]:
        """All registered values as Python ints, one transfer per device; raises the first failed check."""
        values: list[int] = [0] * len(self._values)
        by_device: dict[torch.device, list[int]] = {}
        for i, v in enumerate(self._values):
            by_device.setdefault(v.device, []).append(i)
        for idx in by_device.values():
            for i, v in zip(idx, torch.stack([self._values[i] for i in idx]).tolist()):
                values[i] = v
        for v, message in zip(values, self._messages):
            if message is not None and v:
                raise ValueError(message() if callable(message) else message)
        return values


def flat_positions(mask: torch.Tensor, n: int) -> torch.Tensor:
    """Flat indices ``(n,)`` of the true entries of ``mask`` in reading order, for a known count ``n``.

    ``torch.nonzero`` must synchronise to learn the output size; with ``n`` known, the position of the
    j-th true entry is where the running count first reaches j + 1 (a search, no synchronisation).
    """
    running = mask.reshape(-1).long().cumsum(0)
    return torch.searchsorted(running, torch.arange(1, n + 1, device=mask.device))
