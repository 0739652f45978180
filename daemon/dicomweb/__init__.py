"""DICOMweb on the receiving node (PS3.18), under ``/dicomweb`` on the admin port.

* ``auth``: its own bearer token (``[dicomweb] token`` or ``<data_dir>/dicomweb-token``); the
  PHI token is accepted too, the admin token is not (these answers carry patient data).
* ``wado``: WADO-RS retrieve of a study, series or instance as received (spool files streamed
  as ``multipart/related; type="application/dicom"``), a study's version as a job sees it.
* ``qido``: QIDO-RS search for studies and a study's series (``application/dicom+json``).
* ``stow``: STOW-RS of a remote worker's result objects into ``<data_dir>/results``.

Remote workers (``worker.remote``) fetch with WADO-RS and send results back with STOW-RS;
``make_router`` assembles the routes for ``daemon.ops.admin.app``.
"""

from daemon.dicomweb.routes import make_router

__all__ = ["make_router"]
