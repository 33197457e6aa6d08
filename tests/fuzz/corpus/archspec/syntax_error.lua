return kiln.archspec {
