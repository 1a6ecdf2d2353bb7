"""From what the probes recorded to what the user reads: pure `detectors/`, `attribution/`
(naming the holder and the line, after detection), `remedies` ranked by the bytes they save, and
`confirm` (marking what `oomdoctor lint` finds too)."""
