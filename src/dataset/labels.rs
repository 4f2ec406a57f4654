//! `ID,label` CSV files: the training labels, the submission template and predictions.

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::path::Path;

use super::error::{CsvProblem, DataError};
use crate::atomic::write_atomically;

/// One row of an `ID,label` file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LabelRow {
    /// The sample's ID.
    pub id: u32,
    /// The label, when the file's labels are read (they are placeholders in a submission
    /// template).
    pub label: Option<u8>,
}

/// Reads an `ID,label` file. Stops at the first bad line: a wrong header, a row without two
/// fields, an ID that is not a non-negative integer, an ID seen before, or (when `with_labels`)
/// a label outside 0..=9.
pub fn read_labels(path: &Path, with_labels: bool) -> Result<Vec<LabelRow>, DataError> {
    let bytes = fs::read(path).map_err(|e| DataError::io(path, e))?;
    let csv_error =
        |line: u64, problem: CsvProblem| DataError::Csv { path: path.to_owned(), line, problem };
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .trim(csv::Trim::All)
        .from_reader(bytes.strip_prefix(b"\xef\xbb\xbf").unwrap_or(&bytes));

    let mut rows = Vec::new();
    let mut first_line: HashMap<u32, u64> = HashMap::new();
    let mut record = csv::StringRecord::new();
    let mut header_seen = false;
    loop {
        let more = reader.read_record(&mut record).map_err(|e| {
            let line = e.position().map_or(0, |p| p.line());
            csv_error(line, CsvProblem::Unreadable(e.to_string()))
        })?;
        if !more {
            break;
        }
        let line = record.position().map_or(0, |p| p.line());
        if !header_seen {
            header_seen = true;
            if record.len() != 2 || &record[0] != "ID" || &record[1] != "label" {
                let found = record.iter().collect::<Vec<_>>().join(",");
                return Err(csv_error(line, CsvProblem::Header { found }));
            }
            continue;
        }
        if record.len() != 2 {
            return Err(csv_error(line, CsvProblem::Fields(record.len())));
        }

        let id = parse_id(&record[0])
            .ok_or_else(|| csv_error(line, CsvProblem::BadId(record[0].to_owned())))?;
        if let Some(&first) = first_line.get(&id) {
            return Err(csv_error(line, CsvProblem::DuplicateId { id, first_line: first }));
        }
        first_line.insert(id, line);
        let label = if with_labels {
            let label = record[1].parse::<u8>().ok().filter(|&l| l <= 9).ok_or_else(|| {
                csv_error(line, CsvProblem::BadLabel { id, label: record[1].to_owned() })
            })?;
            Some(label)
        } else {
            None
        };
        rows.push(LabelRow { id, label });
    }

    if !header_seen {
        return Err(csv_error(1, CsvProblem::Header { found: String::new() }));
    }
    Ok(rows)
}

/// The ID an HDF5 member name or CSV field stands for: plain decimal digits without a sign or
/// leading zeros (so that no two spellings name the same sample).
pub fn parse_id(text: &str) -> Option<u32> {
    let canonical = !text.is_empty()
        && text.bytes().all(|b| b.is_ascii_digit())
        && (text == "0" || !text.starts_with('0'));
    canonical.then(|| text.parse().ok()).flatten()
}

/// Writes `ID,label` rows atomically.
pub fn write_labels(
    path: &Path,
    rows: impl IntoIterator<Item = (u32, u8)>,
) -> Result<(), DataError> {
    let mut text = String::from("ID,label\n");
    for (id, label) in rows {
        text.push_str(&format!("{id},{label}\n"));
    }
    write_atomically(path, |tmp| {
        let mut file = fs::File::create(tmp).map_err(|e| DataError::io(path, e))?;
        file.write_all(text.as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(|e| DataError::io(path, e))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_text(text: &str, with_labels: bool) -> Result<Vec<LabelRow>, DataError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("train.csv");
        fs::write(&path, text).unwrap();
        read_labels(&path, with_labels)
    }

    fn problem(text: &str) -> (u64, CsvProblem) {
        match read_text(text, true) {
            Err(DataError::Csv { line, problem, .. }) => (line, problem),
            other => panic!("expected a CSV error, got {other:?}"),
        }
    }

    #[test]
    fn reads_ids_and_labels_in_order() {
        let rows = read_text("ID,label\n5,3\n2,9\n0,0\n", true).unwrap();
        let got: Vec<_> = rows.iter().map(|r| (r.id, r.label)).collect();
        assert_eq!(got, [(5, Some(3)), (2, Some(9)), (0, Some(0))]);
    }

    #[test]
    fn tolerates_a_byte_order_mark_spaces_and_crlf() {
        let rows = read_text("\u{feff}ID, label\r\n 7 ,1\r\n", true).unwrap();
        assert_eq!(rows, [LabelRow { id: 7, label: Some(1) }]);
    }

    #[test]
    fn a_wrong_header_is_reported_on_line_one() {
        let (line, problem) = problem("id,digit\n1,2\n");
        assert_eq!(line, 1);
        assert_eq!(problem, CsvProblem::Header { found: "id,digit".into() });
        assert!(matches!(read_text("", true), Err(DataError::Csv { line: 1, .. })));
    }

    #[test]
    fn a_non_numeric_id_names_its_line() {
        assert_eq!(problem("ID,label\n1,2\nabc,3\n"), (3, CsvProblem::BadId("abc".into())));
        assert_eq!(problem("ID,label\n-4,3\n"), (2, CsvProblem::BadId("-4".into())));
    }

    #[test]
    fn a_duplicate_id_names_both_lines() {
        assert_eq!(
            problem("ID,label\n1,2\n4,3\n1,5\n"),
            (4, CsvProblem::DuplicateId { id: 1, first_line: 2 })
        );
    }

    #[test]
    fn a_label_outside_0_to_9_is_refused() {
        assert_eq!(
            problem("ID,label\n1,10\n"),
            (2, CsvProblem::BadLabel { id: 1, label: "10".into() })
        );
        assert_eq!(
            problem("ID,label\n1,x\n"),
            (2, CsvProblem::BadLabel { id: 1, label: "x".into() })
        );
        // Placeholder labels of a submission template are not checked.
        assert_eq!(read_text("ID,label\n1,x\n", false).unwrap()[0].label, None);
    }

    #[test]
    fn a_short_row_is_refused() {
        assert_eq!(problem("ID,label\n1\n"), (2, CsvProblem::Fields(1)));
    }

    #[test]
    fn ids_have_one_spelling() {
        assert_eq!(parse_id("0"), Some(0));
        assert_eq!(parse_id("49999"), Some(49_999));
        for bad in ["", "07", "+7", "7.0", " 7", "99999999999"] {
            assert_eq!(parse_id(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn written_labels_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pred.csv");
        write_labels(&path, [(3, 1), (1, 9)]).unwrap();
        let rows = read_labels(&path, true).unwrap();
        assert_eq!(rows, [LabelRow { id: 3, label: Some(1) }, LabelRow { id: 1, label: Some(9) }]);
    }
}
