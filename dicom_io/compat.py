"""Where pacsai reaches into pynetdicom's and highdicom's private parts: all of it, here.

Each patch names what it relies on. They were written against exactly
:data:`WRITTEN_FOR` (and ``pyproject.toml`` pins those versions); on an upgrade, read
each one against the new release and run the listener and writer tests before moving
the pin. :func:`check_versions` logs a warning when the installed versions differ.
"""

from __future__ import annotations

import importlib.metadata
import logging
from typing import Any

import highdicom as hd
from pynetdicom.transport import RequestHandler

log = logging.getLogger(__name__)

WRITTEN_FOR = {"pynetdicom": "3.0.4", "highdicom": "0.28.2"}


def check_versions() -> list[str]:
    """Packages whose installed version is not the one these patches were written for."""
    odd = []
    for package, version in WRITTEN_FOR.items():
        installed = importlib.metadata.version(package)
        if installed != version:
            odd.append(f"{package} {installed} (patches in dicom_io.compat written for {version})")
    for line in odd:
        log.warning("untested dependency version: %s", line)
    return odd


# -- pynetdicom ------------------------------------------------------------------------------
class AcceptorRequestHandler(RequestHandler):
    """pynetdicom's request handler with a hook once the acceptor association exists.

    pynetdicom offers none: this overrides the private ``_create_association``, which
    builds the :class:`~pynetdicom.association.Association`, gives it an
    ``AssociationSocket`` (``assoc.dul.socket``) and binds the server's handlers.
    """

    def _create_association(self):  # type: ignore[no-untyped-def]
        assoc = super()._create_association()
        self.association_created(assoc)
        return assoc

    def association_created(self, assoc: Any) -> None:
        """Called with the new association before its thread starts."""


def swap_socket_class(sock: Any, cls: type) -> Any:
    """Give the ``AssociationSocket`` pynetdicom just made the subclass ``cls``.

    Making a second socket instead would queue a second transport-connection event
    (Evt5) in the association's state machine; ``cls`` may add attributes only after.
    """
    sock.__class__ = cls
    return sock


def register_server(ae: Any, server: Any) -> None:
    """Record a server made by ``AE.make_server`` the way ``AE.start_server`` does
    (private ``AE._servers``), so ``AE.shutdown`` and ``server.shutdown`` find it."""
    ae._servers.append(server)


# -- highdicom -------------------------------------------------------------------------------
class TolerantImageLibraryEntryDescriptors(hd.sr.ImageLibraryEntryDescriptors):
    """TID 1602 descriptors that leave out TID 1603/1604 rows the source cannot fill.

    Overrides highdicom's private ``_generate_projection_radiography_descriptors`` and
    ``_generate_cross_sectional_descriptors``, which raise on a CR without Patient
    Orientation or a slice without Pixel Spacing; the image stays in the library.
    """

    def _generate_projection_radiography_descriptors(self, dataset):  # type: ignore[no-untyped-def]
        try:
            return super()._generate_projection_radiography_descriptors(dataset)
        except (AttributeError, IndexError, TypeError, ValueError):
            return []

    def _generate_cross_sectional_descriptors(self, dataset):  # type: ignore[no-untyped-def]
        try:
            return super()._generate_cross_sectional_descriptors(dataset)
        except (AttributeError, IndexError, TypeError, ValueError):
            return []
