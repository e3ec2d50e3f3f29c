"""What every site folder needs, whatever its kind. A kind's site format (layout, reader, writer, split, checks)
lives with the kind: `fedtune.tasks.get(kind).read(...)`, `.write(...)`, `.load_split(...)`, `.check(...)`."""

MIN_SAMPLES = 2   # a site splits its rows into train and validation
