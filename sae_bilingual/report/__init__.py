"""What a study shows: figures, report.html and its feature browser, exports."""
