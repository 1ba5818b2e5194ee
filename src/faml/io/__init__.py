"""Files in and out: MRC volumes, RELION STAR files, the particle table, atomic writes."""
