"""Date formats for English locales (``FORMAT_MODULE_PATH``): compact ISO-like dates, so admin lists
fit a laptop screen ("2026-12-01 05:41" rather than "Dec. 1, 2026, 5:41 a.m.")."""
