//! SQLite state: per-unit runtime rows, the event journal, settings.
