import pytest

from extract.tables import read_rows


class MyError(Exception):
    pass


def test_read_rows_bom_missing_file_missing_column_and_binary(tmp_path):
    p = tmp_path / "labels.csv"
    p.write_bytes("\ufeffname,discrete\nsample_1,happy\n".encode("utf-8"))  # Excel writes a BOM
    cols, rows = read_rows(p, ("name", "discrete"), MyError)
    assert cols == ["name", "discrete"] and rows == [{"name": "sample_1", "discrete": "happy"}]
    with pytest.raises(MyError, match=r"labels file .*nope.csv does not exist \(make one\)"):
        read_rows(tmp_path / "nope.csv", (), MyError, "labels file", "make one")
    with pytest.raises(MyError, match=r"missing discrete \(has: name, label\)"):
        (tmp_path / "other.csv").write_text("name,label\na,b\n")
        read_rows(tmp_path / "other.csv", ("name", "discrete"), MyError)
    (tmp_path / "video.csv").write_bytes(b"\x00\x9f\x92\x96" * 50)
    with pytest.raises(MyError, match="video.csv cannot be read as a UTF-8 CSV"):
        read_rows(tmp_path / "video.csv", ("name",), MyError)
