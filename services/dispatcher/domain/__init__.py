"""The dispatcher's pure logic: throttling and retry schedules."""
