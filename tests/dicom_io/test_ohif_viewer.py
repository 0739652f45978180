"""pacsai's results opened in OHIF's prebuilt viewer over Orthanc's DICOMweb, in headless chromium.

A synthetic chest radiograph (a phantom with a planted nodule), pacsai's SR (TID 1500, one
located finding) and heatmap SC for it are C-STOREd to an Orthanc with its DICOMweb plugin.
OHIF's dist (``tests/viewer``: ``npm ci --prefix tests/viewer``) is served by a small HTTP
server in the test that also proxies ``/dicom-web`` to Orthanc (one origin: no CORS), with an
``app-config.js`` pointing OHIF's dicomweb data source there. ``tests/viewer/ohif.js`` opens
the study with the SR series as the initial display set and reports the page's text
(SVG annotation labels included), page errors and console errors. A screenshot is kept as
``tests/artifacts/ohif-sr.png``.

Needs node, Debian chromium, Orthanc with ``orthanc-dicomweb`` and ``tests/viewer/node_modules``
(or ``PACSAI_OHIF_DIST``); skipped with the reason otherwise.
"""

from __future__ import annotations

import http.server
import json
import os
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import dicomio_samples as samples
from orthanc import OrthancServer, orthanc_binary

from dicom_io.sc import write_heatmap_scs
from dicom_io.sender import Destination, send
from dicom_io.sr import write_sr
from dicom_io.synthetic_study import radiograph
from inference.synthetic import chest_phantom, plant_nodule

REPO = Path(__file__).resolve().parents[2]
VIEWER = REPO / "tests" / "viewer"
ARTIFACTS = REPO / "tests" / "artifacts"
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
CHROMIUM = Path("/usr/bin/chromium")


def _dist() -> Path | None:
    for candidate in (os.environ.get("PACSAI_OHIF_DIST"), VIEWER / "node_modules/@ohif/app/dist"):
        if candidate and (Path(candidate) / "index.html").is_file():
            return Path(candidate)
    return None


DIST = _dist()
pytestmark = [
    pytest.mark.skipif(shutil.which("node") is None, reason="node missing (Debian nodejs)"),
    pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian chromium missing"),
    pytest.mark.skipif(orthanc_binary() is None, reason="Orthanc missing (Debian orthanc)"),
    pytest.mark.skipif(not DICOMWEB_PLUGIN.exists(),
                       reason="Orthanc DICOMweb plugin missing (Debian orthanc-dicomweb)"),
    pytest.mark.skipif(DIST is None, reason="no OHIF viewer dist: npm ci --prefix tests/viewer"),
    pytest.mark.skipif(not (VIEWER / "node_modules/playwright-core").is_dir(),
                       reason="playwright-core missing: npm ci --prefix tests/viewer"),
]

APP_CONFIG = """window.config = {
  routerBasename: '/',
  extensions: [],
  modes: [],
  customizationService: {},
  showStudyList: true,
  maxNumberOfWebWorkers: 2,
  showWarningMessageForCrossOrigin: false,
  showCPUFallbackMessage: false,
  showLoadingIndicator: true,
  strictZSpacingForVolumeViewport: true,
  investigationalUseDialog: { option: 'never' },
  defaultDataSourceName: 'orthanc',
  dataSources: [{
    namespace: '@ohif/extension-default.dataSourcesModule.dicomweb',
    sourceName: 'orthanc',
    configuration: {
      friendlyName: 'Orthanc (pacsai test)',
      name: 'orthanc',
      wadoUriRoot: '%(root)s',
      qidoRoot: '%(root)s',
      wadoRoot: '%(root)s',
      qidoSupportsIncludeField: false,
      supportsReject: false,
      imageRendering: 'wadors',
      thumbnailRendering: 'wadors',
      enableStudyLazyLoad: true,
      supportsFuzzyMatching: false,
      supportsWildcard: true,
      omitQuotationForMultipartRequest: true,
      bulkDataURI: { enabled: true },
    },
  }],
};
"""

TYPES = {".js": "application/javascript", ".css": "text/css", ".wasm": "application/wasm",
         ".html": "text/html", ".json": "application/json", ".svg": "image/svg+xml",
         ".png": "image/png", ".woff2": "font/woff2", ".ico": "image/x-icon"}


class _ViewerServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, dist: Path, orthanc_url: str) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.dist = dist.resolve()
        self.orthanc_url = orthanc_url
        self.url = f"http://127.0.0.1:{self.server_address[1]}"
        self.app_config = (APP_CONFIG % {"root": self.url + "/dicom-web"}).encode()
        self.proxied: list[tuple[str, int]] = []


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _ViewerServer

    def log_message(self, *args: object) -> None:  # quiet
        pass

    def _send(self, status: int, body: bytes, ctype: str,
              extra: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_HEAD(self) -> None:  # noqa: N802
        self.do_GET()

    def do_GET(self) -> None:  # noqa: N802
        path = self.path.split("?", 1)[0]
        if path.startswith("/dicom-web/") or path == "/dicom-web":
            return self._proxy()
        if path == "/app-config.js":
            return self._send(200, self.server.app_config, TYPES[".js"])
        target = (self.server.dist / path.lstrip("/")).resolve()
        if not target.is_relative_to(self.server.dist) or not target.is_file():
            target = self.server.dist / "index.html"  # the app's routes (/viewer, ...)
        ctype = TYPES.get(target.suffix, "application/octet-stream")
        self._send(200, target.read_bytes(), ctype)

    def _proxy(self) -> None:
        req = urllib.request.Request(self.server.orthanc_url + self.path, method=self.command)
        for name in ("Accept", "Range"):
            if self.headers.get(name):
                req.add_header(name, self.headers[name])
        try:
            with urllib.request.urlopen(req, timeout=60) as rsp:
                status, body, ctype = rsp.status, rsp.read(), rsp.headers.get("Content-Type", "")
        except urllib.error.HTTPError as exc:
            status, body = exc.code, exc.read()
            ctype = exc.headers.get("Content-Type", "text/plain")
        self.server.proxied.append((self.path, status))
        self._send(status, body, ctype)


def _chest_study() -> tuple[list, list, str]:
    """A chest phantom DX with a nodule; pacsai's SR and heatmap SCs for it; the SR series UID."""
    rng = np.random.default_rng(13)
    size = 512
    img, lungs = chest_phantom(rng, size)
    nodule = plant_nodule(rng, img, lungs, size)
    ds = radiograph(size=size, seed=13)
    pixels = np.clip(img, 0, 1) * 3500 + rng.normal(0, 15, img.shape)
    pixels = pixels.clip(0, 4095).astype(np.uint16)
    ds.PixelData = pixels.tobytes()
    ds.SeriesDescription = "Synthetic chest PA (nodule phantom)"
    ys, xs = np.nonzero(nodule)
    result = samples.result_for([ds], score=0.87)
    result.findings[0].images[0].heatmap = samples.heatmap(
        32, 32, cy=float(ys.mean()) / size, cx=float(xs.mean()) / size)
    sr = write_sr(result, [ds])
    scs = write_heatmap_scs(result, [ds])
    return [ds], [sr, *scs], str(sr.SeriesInstanceUID)


def test_ohif_opens_the_sr_on_the_chest_image(tmp_path: Path) -> None:
    started = time.monotonic()
    sources, results, sr_series = _chest_study()
    study_uid = str(sources[0].StudyInstanceUID)
    pacs = OrthancServer(tmp_path / "orthanc", extra_config={
        "Plugins": [str(DICOMWEB_PLUGIN)],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": True},
        "DicomModalities": {},
    })
    with pacs:
        outcomes = send([*sources, *results], Destination(pacs.aet, "127.0.0.1", pacs.dicom_port))
        assert [o.category for o in outcomes] == ["success"] * len(outcomes), outcomes
        assert len(outcomes) == len(sources) + len(results)
        modalities = {s["MainDicomTags"]["Modality"] for s in pacs.series_of_study(study_uid)}
        assert modalities >= {"DX", "SR"}, modalities

        server = _ViewerServer(DIST, pacs.url)  # type: ignore[arg-type]
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            shot = ARTIFACTS / "ohif-sr.png"
            shot.unlink(missing_ok=True)
            expected = ["Probability: 0.87"]  # OHIF's label of the finding's NUM (value and unit)
            proc = subprocess.run(
                ["node", str(VIEWER / "ohif.js"), server.url, study_uid, sr_series, str(shot),
                 str(tmp_path / "profile"), *expected],
                capture_output=True, text=True, timeout=180, cwd=VIEWER)
        finally:
            server.shutdown()
            server.server_close()
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    seconds = time.monotonic() - started
    print(f"OHIF: found={report['found']} via {report['how']} in {seconds:.1f} s; "
          f"errors={report['errors']}; console errors={report['consoleErrors'][:10]}")
    assert shot.is_file() and shot.stat().st_size > 10_000
    assert report["external"] == [], report["external"]  # everything from the local origin
    assert report["found"], f"labels not in the page ({report['how']}):\n{report['text'][-3000:]}"
    for text in expected:
        assert text in report["text"]
    problems = report["errors"] + report["consoleErrors"]
    assert not [e for e in problems if "ReferencedSOPSequence" in e], problems
    assert report["errors"] == [], report["errors"]
    failed = [(p, s) for p, s in server.proxied if s >= 400]
    assert failed == [], failed
