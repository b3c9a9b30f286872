"""``cupy.cuda`` of the stand-in: one device that is always available."""

from __future__ import annotations

from types import SimpleNamespace

from fakecupy import _names


def is_available() -> bool:
    return True


def _get_device_count() -> int:
    return 1


runtime = SimpleNamespace(getDeviceCount=_get_device_count, CUDARuntimeError=RuntimeError)


class Device:
    """The one stand-in device (id 0)."""

    def __init__(self, device=None) -> None:
        self.id = 0 if device is None else int(device)
        if self.id != 0:
            raise RuntimeError(f"cudaErrorInvalidDevice: device {self.id} (the stand-in has one device)")

    def synchronize(self) -> None:
        """Waiting for the device is not a copy: not counted."""

    def use(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass

    def __eq__(self, other) -> bool:
        return isinstance(other, Device) and other.id == self.id

    def __hash__(self) -> int:
        return self.id


def __getattr__(name: str):
    _names.require("cupy.cuda", name)
    raise NotImplementedError(f"fakecupy: cupy.cuda.{name} is not emulated")


_names.check_defined("cupy.cuda", {"is_available", "runtime", "Device"})
