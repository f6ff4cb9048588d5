"""Notifications as delivery channels: a webhook or an HL7 receiver per configured target.

Rows are named ``webhook:<name>`` and ``hl7:<name>`` in the index's ``deliveries`` table
(beside the PACS destinations, so ``dicom-node studies --json`` shows them and the same
persistent jobs retry them). Only studies that finished ``done`` are enqueued (the
worker hands results to delivery after it recorded them), and a target with
``only_positive`` only those whose ``any`` finding is present at the checkpoint's
threshold.

The report is built at each attempt from the index (findings, result record) and one
spooled instance's header (patient, accession), so nothing identifying is kept in the
job store or the index.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from dicom_node.config import Hl7Target, Settings, Webhook
from dicom_node.logs import study_key
from dicom_node.notify import hl7, webhook
from dicom_node.notify.report import (
    PermanentNotifyError,
    StudyReport,
    findings_of,
    is_positive,
    read_patient,
)
from dicom_node.pipeline.delivery import Channel
from dicom_node.store.index import Index


class ReportBuilder:
    """Builds the :class:`StudyReport` of a study for every notification channel."""

    def __init__(
        self, index: Index, spool_dir: Path, hash_key: str, link: Callable[[str], str]
    ) -> None:
        self.index = index
        self.spool_dir = spool_dir
        self.hash_key = hash_key
        self.link = link

    def build(self, study_uid: str, result: dict[str, Any]) -> StudyReport:
        study = self.index.study(study_uid)
        if study is None or study.findings is None:
            raise PermanentNotifyError("the study has no findings")
        instances = self.index.instances(study_uid)
        chosen = [i for i in instances if i.series_uid == result.get("series_uid")]
        if not (chosen or instances):
            raise PermanentNotifyError("the study's instances are no longer indexed")
        source = (chosen or instances)[0]
        key = study_key(study_uid, self.hash_key)
        return StudyReport(
            study_uid=study_uid,
            study_key=key,
            generation=int(result["generation"]),
            link=self.link(key),
            findings=findings_of(study.findings, result),
            model_uid=str(result.get("model_uid", "")),
            model_name=str(result.get("model_name", "")),
            patient=read_patient(self.spool_dir / source.path),
        )


class _NotifyChannel:
    def __init__(self, name: str, target: Webhook | Hl7Target, reports: ReportBuilder) -> None:
        self.name = name
        self.retry = target
        self.target = target
        self.reports = reports

    def wants(self, files: dict[str, Path], findings: dict[str, Any] | None) -> bool:
        if not findings:
            return False
        return is_positive(findings) or not self.target.only_positive


class WebhookChannel(_NotifyChannel):
    def __init__(self, hook: Webhook, reports: ReportBuilder) -> None:
        super().__init__(f"webhook:{hook.name}", hook, reports)
        self.hook = hook

    def send(self, study_uid: str, result: dict[str, Any]) -> float:
        return webhook.post(self.hook, self.reports.build(study_uid, result))


class Hl7Channel(_NotifyChannel):
    def __init__(self, target: Hl7Target, reports: ReportBuilder) -> None:
        super().__init__(f"hl7:{target.name}", target, reports)
        self.hl7 = target

    def send(self, study_uid: str, result: dict[str, Any]) -> float:
        return hl7.send(self.hl7, self.reports.build(study_uid, result))


def notify_channels(settings: Settings, index: Index) -> list[Channel]:
    """One channel per configured webhook and HL7 target (none: an empty list)."""
    s = settings
    reports = ReportBuilder(
        index, s.resolve(s.storage.spool_dir), s.logging.hash_key, s.web.study_link
    )
    channels: list[Channel] = [WebhookChannel(h, reports) for h in s.notify.webhooks]
    channels += [Hl7Channel(t, reports) for t in s.notify.hl7]
    return channels
