"""Audit reports: tables, heatmaps and a self-contained HTML page, written to files."""

from .audit import Audit, AuditConfig, audit_job, write_audit

__all__ = ["Audit", "AuditConfig", "audit_job", "write_audit"]
