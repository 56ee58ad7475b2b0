"""Arbiter's errors as HTTP answers: every refusal is a 4xx with a ``detail`` that says why."""

from django.core.exceptions import ValidationError
from rest_framework import status
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from ..actions import Conflict, NotAdmitted
from ..browsing import InvalidQuery
from ..exports import ExportError
from ..imports import ImportFailed
from ..judgments import InvalidJudgment


def exception_handler(exc, context):
    if isinstance(exc, ImportFailed):
        errors = [{"line": line, "message": message} for line, message in exc.errors]
        return Response({"detail": exc.message, "errors": errors}, status=status.HTTP_400_BAD_REQUEST)
    if isinstance(exc, (InvalidJudgment, ExportError, InvalidQuery)):
        return Response({"detail": str(exc)}, status=status.HTTP_400_BAD_REQUEST)
    if isinstance(exc, ValidationError):
        return Response({"detail": "; ".join(exc.messages), "errors": getattr(exc, "message_dict", None)}, status=400)
    if isinstance(exc, NotAdmitted):
        return Response({"detail": str(exc)}, status=status.HTTP_403_FORBIDDEN)
    if isinstance(exc, Conflict):
        return Response({"detail": str(exc)}, status=status.HTTP_409_CONFLICT)
    return drf_exception_handler(exc, context)
