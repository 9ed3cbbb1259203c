"""What a run says: report.json (one builder, its schema), report.html, charts and the summary."""
