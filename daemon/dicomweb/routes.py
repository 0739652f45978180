"""The ``/dicomweb`` routes (WADO-RS, QIDO-RS, STOW-RS); every one needs the DICOMweb token.

No ``from __future__ import annotations`` here: FastAPI resolves the routes' annotations.
"""

from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Depends, HTTPException, Query, Request, status
from fastapi.responses import JSONResponse, StreamingResponse

from daemon.config import Settings
from daemon.dicomweb import qido, stow, wado
from daemon.dicomweb.auth import DicomwebAuth
from daemon.store.db import Database
from dicom_io.multipart import DICOM, MultipartError, PartReader, boundary_of, new_boundary, \
    parse_content_type, related_type

PREFIX = "/dicomweb"
DICOM_JSON = "application/dicom+json"


def _json(body: Any, status_code: int = 200) -> JSONResponse:
    return JSONResponse(body, status_code=status_code, media_type=DICOM_JSON)


def make_router(settings: Settings, db: Database) -> APIRouter:
    """The /dicomweb routes, each behind the DICOMweb token."""
    auth = DicomwebAuth(settings)
    stow.clear_staging(settings.results_dir)
    router = APIRouter(prefix=PREFIX, tags=["dicomweb"], dependencies=[Depends(auth)])
    _wado_routes(router, settings, db)
    _qido_routes(router, db)
    _stow_route(router, settings, db)
    return router


def _wado_routes(router: APIRouter, settings: Settings, db: Database) -> None:
    def retrieve(request: Request, study: str, version: int | None, series: str | None = None,
                 sop: str | None = None) -> StreamingResponse:
        try:
            wado.check_accept(request.headers.get("accept"))
            found = wado.select_instances(settings, db, study, version=version,
                                          series_uid=series, sop_uid=sop)
        except wado.NotAcceptable as exc:
            raise HTTPException(status.HTTP_406_NOT_ACCEPTABLE, str(exc)) from None
        except wado.NotFound as exc:
            raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from None
        boundary = new_boundary()
        return StreamingResponse(wado.body(found, boundary, PREFIX, study),
                                 media_type=related_type(boundary),
                                 headers={"X-Pacsai-Instances": str(len(found))})

    Version = Annotated[int | None, Query(ge=1, description="The study version a job analyses "
                                          "(instances of versions 1..N); default: the newest")]

    @router.get("/studies/{study}", summary="WADO-RS: a study's instances as received",
                response_class=StreamingResponse)
    def retrieve_study(request: Request, study: str, version: Version = None) -> StreamingResponse:
        return retrieve(request, study, version)

    @router.get("/studies/{study}/series/{series}", summary="WADO-RS: a series' instances",
                response_class=StreamingResponse)
    def retrieve_series(request: Request, study: str, series: str,
                        version: Version = None) -> StreamingResponse:
        return retrieve(request, study, version, series)

    @router.get("/studies/{study}/series/{series}/instances/{sop}",
                summary="WADO-RS: one instance", response_class=StreamingResponse)
    def retrieve_instance(request: Request, study: str, series: str, sop: str,
                          version: Version = None) -> StreamingResponse:
        return retrieve(request, study, version, series, sop)


def _qido_routes(router: APIRouter, db: Database) -> None:
    @router.get("/studies", summary="QIDO-RS: search for studies")
    def search_studies(
            StudyInstanceUID: str | None = None, PatientID: str | None = None,
            AccessionNumber: str | None = None, StudyDate: str | None = None,
            ModalitiesInStudy: str | None = None,
            limit: Annotated[int, Query(ge=1, le=1000)] = 100,
            offset: Annotated[int, Query(ge=0)] = 0) -> JSONResponse:
        filters = {k: v for k, v in {
            "StudyInstanceUID": StudyInstanceUID, "PatientID": PatientID,
            "AccessionNumber": AccessionNumber, "StudyDate": StudyDate,
            "ModalitiesInStudy": ModalitiesInStudy}.items() if v}
        return _json(qido.search_studies(db, filters, PREFIX, limit=limit, offset=offset))

    @router.get("/studies/{study}/series", summary="QIDO-RS: a study's series")
    def search_series(study: str, Modality: str | None = None) -> JSONResponse:
        found = qido.search_series(db, study, PREFIX, modality=Modality)
        if found is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, "no such study")
        return _json(found)


def _stow_route(router: APIRouter, settings: Settings, db: Database) -> None:
    @router.post("/studies/{study}", summary="STOW-RS: a remote worker's result objects")
    async def store(request: Request, study: str,
                    job: Annotated[int, Query(ge=1, description="The job these results are of")],
                    attempt: Annotated[int, Query(ge=1, description="Its attempt (the fence)")],
                    ) -> JSONResponse:
        try:
            boundary = boundary_of(request.headers.get("content-type", ""))
        except MultipartError as exc:
            raise HTTPException(status.HTTP_415_UNSUPPORTED_MEDIA_TYPE, str(exc)) from None
        _, params = parse_content_type(request.headers.get("content-type", ""))
        if params.get("type", DICOM).lower() != DICOM:
            raise HTTPException(status.HTTP_415_UNSUPPORTED_MEDIA_TYPE,
                                f'only type="{DICOM}" parts are stored')
        try:
            folders = await anyio.to_thread.run_sync(stow.study_folder_names, settings, db, study)
        except stow.UnknownStudy:
            raise HTTPException(status.HTTP_404_NOT_FOUND, "no such study") from None
        def holds() -> bool:
            return stow.attempt_holds(db, study, job, attempt)

        if not await anyio.to_thread.run_sync(holds):
            raise HTTPException(status.HTTP_412_PRECONDITION_FAILED,
                                f"job {job} is not running under attempt {attempt} (re-queued "
                                "or cancelled): its results are not taken")
        writer = stow.ResultWriter(settings.results_dir, study, folders,
                                   fsync=settings.storage.fsync == "always", holds=holds)
        reader = PartReader(boundary, writer)
        limit, seen = settings.dicomweb.max_stow_bytes, 0
        try:
            async for chunk in request.stream():
                seen += len(chunk)
                if seen > limit:
                    raise HTTPException(status.HTTP_413_REQUEST_ENTITY_TOO_LARGE,
                                        f"the body passes dicomweb.max_stow_bytes ({limit})")
                if chunk:  # parsing and writing (fsync) off the event loop
                    await anyio.to_thread.run_sync(reader.feed, chunk)
            reader.close()
        except MultipartError as exc:
            raise HTTPException(status.HTTP_400_BAD_REQUEST, str(exc)) from None
        finally:
            writer.abort()  # a part still open (the body broke off) leaves nothing
        if writer.stale:
            raise HTTPException(status.HTTP_412_PRECONDITION_FAILED,
                                f"job {job} lost attempt {attempt} while its results came in: "
                                "the rest are not taken")
        code, answer = stow.response(writer.outcomes, PREFIX, study)
        return _json(answer, code)
