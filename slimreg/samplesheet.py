"""Samplesheet parsing and validation: every problem reported at once, each with its row number.

Columns: ``sample,image,reference,session,landmarks`` (the last two optional). Relative paths are
resolved against the samplesheet's folder, so a sheet and its images can be moved together.

Two ways to check the files a sheet names: open them here (``slimreg run``, ``slimreg plan`` on a workstation), or
read the headers that PROBE tasks wrote where Nextflow staged each file (``--headers``; see slimreg.io.header).
The second never opens a file, so a sheet may name ``s3://``, ``gs://`` or ``az://`` locations; tasks then name
each file by the text the sheet gives (:attr:`SampleRow.source`) and Nextflow stages it under that name.
"""

from __future__ import annotations

import csv
import errno
import os
import re
import unicodedata
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from slimreg.errors import InputError, SlimregError

if TYPE_CHECKING:
    from slimreg.io.probe import ImageInfo

REQUIRED_COLUMNS = ("sample", "image", "reference")
OPTIONAL_COLUMNS = ("session", "landmarks")
# an image smaller than this on a side has no structure to align: edge maps are smoothed over 1-2 px and the
# alignment score compares with copies shifted by a tenth of the image, which leaves nothing below 16 px
MIN_SIDE_PX = 16
# the most one tile or strip may hold, decoded (slimreg.samplesheet.segment_problem): libtiff's own cap on a
# compressed one, and a cap that keeps an uncompressed one small beside a task's working memory
MAX_COMPRESSED_SEGMENT_BYTES = 50 * 1024**2
MAX_SEGMENT_BYTES = 256 * 1024**2
# most file systems' limit on one file name (ext4, XFS, Btrfs, ZFS, APFS: 255 bytes)
MAX_FILE_NAME_BYTES = 255
# what slimreg adds to a name it writes under a temporary name: "." + ".partial-" + pid (7 digits at most) + "-"
# + 8 hex digits, and the tile writer's ".tiles" (slimreg.atomic.temporary_sibling)
TEMPORARY_NAME_EXTRA = 1 + 9 + 7 + 1 + 8 + 6
TRUE_WORDS = {"true", "yes", "1", "y", "t"}
FALSE_WORDS = {"false", "no", "0", "n", "f", ""}


TIFF_SUFFIXES = (".ome.tiff", ".ome.tif", ".tiff", ".tif", ".btf", ".svs", ".qptiff")


def safe_id(text: str) -> str:
    """The form of a name used in task ids and work folders (anything but letters, digits, ``_.-`` -> ``_``)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)


def image_stem(path: str | Path) -> str:
    """A file name without its TIFF suffixes (``round1.ome.tif`` -> ``round1``)."""
    name = Path(path).name
    for suffix in TIFF_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return Path(path).stem


@dataclass(frozen=True)
class SampleRow:
    """One image of the samplesheet; ``row`` is its line number in the file (the header is line 1)."""

    row: int
    sample: str
    image: Path  # where the image lies here (from headers: the sheet's text as a path, good for its name only)
    reference: bool
    session: str
    landmarks: Path | None
    # how the plan's tasks name the files: the absolute path, or (from headers) the sheet's text
    source: str = ""
    landmarks_source: str | None = None

    @property
    def stem(self) -> str:
        """The image's file name without TIFF suffixes: used to name every output of this image."""
        return image_stem(self.image)


@dataclass(frozen=True)
class Sample:
    """A group of images registered together onto one reference."""

    name: str
    reference: SampleRow
    moving: tuple[SampleRow, ...]

    @property
    def rows(self) -> tuple[SampleRow, ...]:
        return (self.reference, *self.moving)


@dataclass(frozen=True)
class Samplesheet:
    """A validated samplesheet."""

    path: Path
    rows: tuple[SampleRow, ...]
    # image headers by SampleRow.source, when they were read from PROBE's headers instead of the files
    infos: dict[str, ImageInfo] = field(default_factory=dict)

    def samples(self) -> list[Sample]:
        """Samples in first-appearance order; moving images in samplesheet order."""
        groups: OrderedDict[str, list[SampleRow]] = OrderedDict()
        for row in self.rows:
            groups.setdefault(row.sample, []).append(row)
        result = []
        for name, rows in groups.items():
            reference = next(r for r in rows if r.reference)
            result.append(Sample(name, reference, tuple(r for r in rows if not r.reference)))
        return result


def read_samplesheet(path: str | Path, probe_images: bool = True,
                     headers: dict[str, dict[str, Any]] | None = None) -> Samplesheet:
    """Parse and validate; raise one :class:`InputError` that lists every problem found.

    With ``headers`` (from slimreg.io.header.read_headers) no file is opened: each file's header stands for it.
    """
    path = Path(path)
    if path.is_dir():
        raise InputError("is a folder, not a samplesheet.", path, f"give the CSV file itself (for example "
                         f"{path / 'samplesheet.csv'}).")
    if not path.is_file():
        raise InputError("samplesheet not found.", path, "give the path of a CSV with columns "
                         "sample,image,reference[,session,landmarks].")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as error:
        raise InputError("samplesheet is not UTF-8 text.", path, "save it as a plain CSV file.") from error
    # line ends kept: a line break inside a quoted value stays in it (and is refused), not silently dropped
    lines = [line for line in text.splitlines(keepends=True) if line.strip()]
    if not lines:
        raise InputError("samplesheet is empty.", path, "add a header line 'sample,image,reference,session,"
                         "landmarks' and one line per image.")
    reader = csv.DictReader(lines)
    header = [h.strip() for h in (reader.fieldnames or [])]
    problems: list[str] = []
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    unknown = [c for c in header if c not in REQUIRED_COLUMNS + OPTIONAL_COLUMNS]
    separator = _wrong_separator(header)
    if separator:
        _raise(path, [f"row 1: the columns are separated by {separator}, not commas: use commas (save the sheet as "
                      f"comma-separated CSV; the header then reads {','.join(REQUIRED_COLUMNS + OPTIONAL_COLUMNS)})"])
    if missing:
        problems.append(f"row 1: missing column(s) {', '.join(missing)}")
    if unknown:
        problems.append(f"row 1: unknown column(s) {', '.join(unknown)} (allowed: "
                        f"{', '.join(REQUIRED_COLUMNS + OPTIONAL_COLUMNS)})")
    if missing or unknown:
        _raise(path, problems)
    if len(lines) == 1:
        _raise(path, ["the samplesheet has a header but no images"])

    rows: list[SampleRow] = []
    seen_images: dict[Path, int] = {}
    counts: dict[int, int] = {}  # landmarks per row
    infos: dict[str, ImageInfo] = {}
    for number, raw in enumerate(reader, start=2):
        record = {(k or "").strip(): (v or "").strip() for k, v in raw.items() if k is not None}
        if None in raw:
            problems.append(f"row {number}: more values than columns")
            continue
        sample, image_text = record.get("sample", ""), record.get("image", "")
        if not sample:
            problems.append(f"row {number}: 'sample' is empty")
        controls = _control_character_problems(number, record)
        if controls:
            problems += controls
            continue  # such a name or path cannot be looked at further (a NUL byte cannot even name a file)
        too_long = _name_length_problem(number, sample, record.get("session", ""), image_stem(image_text))
        if too_long:
            problems.append(too_long)
        if any(c in sample for c in "/\\ ") or sample.startswith("."):
            problems.append(f"row {number}: sample name {sample!r} must not contain spaces or slashes")
        reference_text = record.get("reference", "").lower()
        if reference_text not in TRUE_WORDS | FALSE_WORDS:
            problems.append(f"row {number}: 'reference' must be true or false, got {record.get('reference')!r}")
        if not image_text:
            problems.append(f"row {number}: 'image' is empty")
            continue
        if headers is not None:
            row, landmark_count = _row_from_headers(number, record, sample, reference_text, headers, infos, problems)
            if row is None:
                continue
            if Path(row.source) in seen_images:
                problems.append(f"row {number}: image {image_text} already listed in row "
                                f"{seen_images[Path(row.source)]}")
            seen_images[Path(row.source)] = number
            rows.append(row)
            if landmark_count is not None:
                counts[number] = landmark_count
            continue
        try:
            image = _resolve(path, image_text)
        except InputError as error:
            problems.append(f"row {number}: {error.message}")
            continue
        if image in seen_images:
            problems.append(f"row {number}: image {image_text} already listed in row {seen_images[image]}")
        seen_images[image] = number
        if not image.is_file():
            problems.append(f"row {number}: image file not found: {image}")
        elif probe_images:
            from slimreg.io.probe import probe

            try:
                info = probe(image)
            except SlimregError as error:
                problems.append(f"row {number}: {error}")
            else:
                problems += [f"row {number}: {p}" for p in _image_problems(info, str(image))]
        try:
            landmarks = _resolve(path, record["landmarks"]) if record.get("landmarks") else None
        except InputError as error:
            problems.append(f"row {number}: {error.message}")
            landmarks = None
        landmark_count = None
        if landmarks is not None and not landmarks.is_file():
            problems.append(f"row {number}: landmarks file not found: {landmarks}")
        elif landmarks is not None:
            from slimreg.landmarks import read_landmarks

            try:
                landmark_count = len(read_landmarks(landmarks))
            except SlimregError as error:
                problems.append(f"row {number}: {error}")
        session = record.get("session", "")
        rows.append(SampleRow(number, sample, image, reference_text in TRUE_WORDS, session, landmarks,
                              source=str(image), landmarks_source=str(landmarks) if landmarks else None))
        if landmark_count is not None:
            counts[number] = landmark_count

    problems += _check_groups(rows)
    problems += _check_landmark_counts(rows, counts)
    if problems:
        _raise(path, problems)
    return Samplesheet(path=path, rows=tuple(rows), infos=infos)


def _control_character_problems(number: int, record: dict[str, str]) -> list[str]:
    """Tabs, newlines, NUL and other control characters in a name or path, one message per row.

    Names become file names and columns of tab-separated tables (a tab in a sample name shifted every column after
    it in slimreg_mqc.tsv); a NUL byte cannot be part of a file name at all (it used to end in a traceback).
    """
    found = []
    for column in ("sample", "session", "image", "landmarks"):
        text = record.get(column, "")
        bad = sorted({c for c in text if unicodedata.category(c) == "Cc"})
        if bad:
            shown = ", ".join(repr(c) for c in bad)
            found.append(f"{column} {text!r} contains control character(s) {shown}")
    if not found:
        return []
    return [f"row {number}: {'; '.join(found)}: names and paths must be printable text (letters, digits, '_', "
            "'-', '.'); retype them without tabs, line breaks or NUL bytes"]


def _name_length_problem(number: int, sample: str, session: str, stem: str) -> str | None:
    """A name that would make a file name past the file system's limit, found here and not by a task.

    The longest names slimreg writes for a row: a task's records (``project-<sample>-<session>.memory.json``),
    a session's registered projection (``<session>.projection.registered.ome.tif``) and a split stack's pieces
    (``<image>_b<n>.ome.tif``), each first under a temporary name (TEMPORARY_NAME_EXTRA more bytes).
    """
    session = session or stem
    candidates = [safe_id(f"project-{sample}-{session}") + ".memory.json",
                  safe_id(f"split-{sample}-{stem}") + ".memory.json",
                  f"{session}.projection.registered.ome.tif", f"{stem}_b99999.ome.tif", sample]
    longest = max(candidates, key=lambda name: len(name.encode()))
    size = len(longest.encode()) + TEMPORARY_NAME_EXTRA
    if size <= MAX_FILE_NAME_BYTES:
        return None
    names = f"sample {_shortened(sample)} ({len(sample.encode())} bytes)"
    names += f", session {_shortened(session)}" if session != stem else f", image {_shortened(stem)}"
    names += f" ({len(session.encode())} bytes)"
    return (f"row {number}: names too long: {names} make file names of up to {size} bytes, past the "
            f"{MAX_FILE_NAME_BYTES}-byte limit on one file name; shorten them by at least "
            f"{size - MAX_FILE_NAME_BYTES} bytes")


def _shortened(text: str, keep: int = 24) -> str:
    """A long name as its start and end, for a message that must stay one readable line."""
    return repr(text) if len(text) <= 2 * keep else repr(f"{text[:keep]}...{text[-keep:]}")


def _image_problems(info: ImageInfo, name: str) -> list[str]:
    problems = []
    layout = segment_problem(info)
    if layout:
        problems.append(f"{name} {layout}")
    if min(info.width, info.height) < MIN_SIDE_PX:
        problems.append(f"{name} is {info.width} x {info.height} px: too small to register (it needs at least "
                        f"{MIN_SIDE_PX} px a side to hold structure to align)")
    return problems


def _row_from_headers(number: int, record: dict[str, str], sample: str, reference_text: str,
                      headers: dict[str, dict[str, Any]], infos: dict[str, ImageInfo],
                      problems: list[str]) -> tuple[SampleRow | None, int | None]:
    """A row checked against PROBE's headers (no file is opened): its image's header, its landmarks' count."""
    from slimreg.io.header import image_info_from_json

    image_text, landmarks_text = record["image"], record.get("landmarks", "")
    header = headers.get(image_text)
    if header is None:
        problems.append(f"row {number}: no header for image {image_text}: the pipeline probes every file the "
                        "samplesheet names (PROBE); was the samplesheet changed after it ran?")
        return None, None
    if header.get("kind") != "image":
        problems.append(f"row {number}: {header.get('error') or f'{image_text} is not an image'}")
        return None, None
    info = image_info_from_json(header["info"])
    problems += [f"row {number}: {p}" for p in _image_problems(info, image_text)]
    infos[image_text] = info
    landmark_count = None
    if landmarks_text:
        marks = headers.get(landmarks_text)
        if marks is None:
            problems.append(f"row {number}: no header for landmarks {landmarks_text} (PROBE did not run on it)")
        elif marks.get("kind") != "landmarks":
            problems.append(f"row {number}: {marks.get('error') or f'{landmarks_text} is not a landmarks CSV'}")
        else:
            landmark_count = int(marks["count"])
    row = SampleRow(number, sample, Path(header["name"]), reference_text in TRUE_WORDS, record.get("session", ""),
                    Path(headers[landmarks_text]["name"]) if landmarks_text in headers else None,
                    source=image_text, landmarks_source=landmarks_text or None)
    return row, landmark_count


def _check_groups(rows: list[SampleRow]) -> list[str]:
    problems = []
    by_sample: OrderedDict[str, list[SampleRow]] = OrderedDict()
    for row in rows:
        by_sample.setdefault(row.sample, []).append(row)
    for sample, members in by_sample.items():
        references = [r.row for r in members if r.reference]
        if len(references) != 1:
            where = f" (rows {', '.join(map(str, references))})" if references else ""
            problems.append(f"sample {sample}: needs exactly one reference=true row, found {len(references)}{where}")
    # a session name is the sample's own: two animals may each have a 'day1' (outputs sit in per-sample folders)
    # names that differ only in characters task ids replace (m:1 and m_1, "r 1" and r_1) would share a task id,
    # and one of them would silently never run: refuse them here
    samples: dict[str, tuple[str, int]] = {}
    for row in rows:
        first = samples.setdefault(safe_id(row.sample), (row.sample, row.row))
        if first[0] != row.sample:
            problems.append(f"row {row.row}: sample {row.sample!r} and sample {first[0]!r} (row {first[1]}) differ "
                            "only in characters that task ids replace; rename one")
    stems: dict[tuple[str, str], tuple[str, int]] = {}
    for row in rows:
        key = (row.sample, safe_id(row.stem).lower())
        first_stem = stems.setdefault(key, (row.stem, row.row))
        if first_stem[1] != row.row:
            same = "repeats" if first_stem[0] == row.stem else \
                f"differs only in case or punctuation from {first_stem[0]!r} in"
            problems.append(f"row {row.row}: image name {row.stem!r} {same} row {first_stem[1]} of sample "
                            f"{row.sample}; outputs would collide (rename one)")
    return problems


def _check_landmark_counts(rows: list[SampleRow], counts: dict[int, int]) -> list[str]:
    """QC pairs landmark i of an image with landmark i of its reference: the files must have as many rows."""
    problems = []
    references = {r.sample: r for r in rows if r.reference}
    for row in rows:
        reference = references.get(row.sample)
        if row.reference or reference is None or row.row not in counts:
            continue
        if reference.row not in counts:
            problems.append(f"row {row.row}: has landmarks but its reference (row {reference.row}) has none")
        elif counts[row.row] != counts[reference.row]:
            problems.append(f"row {row.row}: {counts[row.row]} landmarks, but the reference's file (row "
                            f"{reference.row}) has {counts[reference.row]}; give both the same points in order")
    return problems


def segment_problem(info: ImageInfo) -> str | None:
    """Why an image's storage layout makes its reading cost unbounded by any preset, or None.

    A reader must decode a whole tile or strip to return any of its pixels. Measured: a 40000 px square image
    in one uncompressed strip peaks at 1.65 GB (the whole file) to give a 1000 px view that a tiled copy gives
    in 200 MB; libtiff refuses a compressed strip past 50 MB outright ("cumulated memory allocation ... beyond the
    52428800 byte limit").
    """
    limit = MAX_COMPRESSED_SEGMENT_BYTES if info.compression != "none" else MAX_SEGMENT_BYTES
    if info.segment_bytes <= limit:
        return None
    from slimreg.io.probe import pyvips_conversion

    kind = "tiles" if info.tile else "strips"
    return (f"stores its pixels in {kind} of {info.segment_bytes / 1024**2:.0f} MB each (decoded): reading any "
            f"part of it costs at least that much memory, whatever the preset (limit {limit / 1024**2:.0f} MB "
            f"for {'compressed' if info.compression != 'none' else 'uncompressed'} data). Convert it to a tiled "
            f"pyramid first, e.g. {pyvips_conversion(Path(info.path).name, 'tiled.tif', bigtiff=True)}")


def _wrong_separator(header: list[str]) -> str | None:
    """"tabs" or "semicolons" when a header field is several column names joined by one (a sheet saved from a
    spreadsheet as tab-separated, or as CSV in a locale whose list separator is ';'), else None.

    Read with commas such a header is one field, "sample\\timage\\treference", which the generic message would call
    an unknown column: the fix is the separator, not the names."""
    known = set(REQUIRED_COLUMNS + OPTIONAL_COLUMNS)
    for field_text in header:
        for character, words in (("\t", "tabs"), (";", "semicolons")):
            parts = [part.strip().strip('"') for part in field_text.split(character)]
            if len(parts) > 1 and any(part in known for part in parts):
                return words
    return None


def _resolve(sheet: Path, text: str) -> Path:
    candidate = Path(text).expanduser()
    # a staged (symlinked) samplesheet resolves relative paths from where it really lives
    given = candidate if candidate.is_absolute() else sheet.resolve().parent / candidate
    try:
        resolved = given.resolve()
        if resolved.is_symlink():
            os.stat(resolved)  # a link left after resolving is a loop (Python 3.13's resolve() no longer raises)
    except RuntimeError as error:  # pathlib's "Symlink loop from ..." (Python 3.11, 3.12)
        raise InputError(f"{text} is a loop of symbolic links ({error}); point the row at the real file.",
                         sheet) from error
    except OSError as error:
        if error.errno != errno.ELOOP:
            return given  # missing or unreadable: reported as such by the caller
        raise InputError(f"{text} is a loop of symbolic links ({error.strerror}); point the row at the real "
                         "file.", sheet) from error
    return resolved


def _raise(path: Path, problems: list[str]) -> None:
    listing = "\n".join(f"  - {p}" for p in problems)
    raise InputError(f"samplesheet has {len(problems)} problem(s):\n{listing}\n", path,
                     "correct these rows and run `slimreg validate` again.")
