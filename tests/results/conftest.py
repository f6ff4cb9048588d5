"""The results and SCU tests share their fixtures (a small positive phantom, its series
and headers, real Storage SCPs): they live in ``results_fixtures``."""

from results_fixtures import ct_series, phantom, source_headers, start_scp, storescp

__all__ = ["ct_series", "phantom", "source_headers", "start_scp", "storescp"]
