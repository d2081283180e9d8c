"""Loaders: every supported format on small hand-made files, and malformed input."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from model.data import DataFormatError, detect_format, load_interactions
from model.data import MIN_DISTINCT_CAP, is_dense_enough

FIXTURES = Path(__file__).parent / "fixtures" / "data"


def columns(x):
    return list(x.user_ids), list(x.item_ids), list(x.timestamps)


def test_movielens_100k_udata_with_side_files():
    x = load_interactions(FIXTURES / "ml-100k" / "u.data")
    assert columns(x) == (["1", "1", "2", "2", "3"], ["10", "20", "10", "30", "20"],
                          [881250949.0, 881250900.0, 891717742.0, 891717742.0, 878887116.0])
    assert x.user_ids.dtype == object and x.timestamps.dtype == np.float64
    assert x.user_profiles["2"] == {"age": "53", "gender": "F", "occupation": "other", "zip_code": "94043"}
    assert x.item_features["10"] == {"genre": ["Animation", "Children's", "Comedy"]}
    assert x.item_features["20"] == {"genre": ["Comedy"]}  # latin-1 title read without error
    assert x.item_features["30"] == {"genre": ["unknown"]}


def test_movielens_dat_with_side_files():
    x = load_interactions(FIXTURES / "ml-1m" / "ratings.dat")
    assert columns(x) == (["1", "1", "2"], ["1193", "661", "1193"], [978300760.0, 978302109.0, 978298413.0])
    assert x.user_profiles["1"] == {"gender": "F", "age": "1", "occupation": "10", "zip_code": "48067"}
    assert x.item_features["661"] == {"genre": ["Animation", "Children's", "Musical"]}


def test_movielens_latest_csv_with_quoted_movies():
    x = load_interactions(FIXTURES / "ml-latest" / "ratings.csv")
    assert detect_format(FIXTURES / "ml-latest" / "ratings.csv") == "movielens-csv"
    assert columns(x)[:2] == (["1", "1", "2", "2"], ["1", "3", "1", "4"])
    assert x.item_features["3"] == {"genre": ["Comedy", "Romance"]}
    assert x.item_features["4"] == {}  # "(no genres listed)" is no genre
    assert x.user_profiles == {}


def test_recbole_atomic_files_and_feature_choice():
    path = FIXTURES / "recbole" / "tiny.inter"
    x = load_interactions(path)
    assert columns(x) == (["u1", "u1", "u2", "u2"], ["i1", "i2", "i1", "i3"], [10.0, 5.0, 7.0, 7.0])
    # profile: .user token columns but the id (float columns are not categorical); empty = missing
    assert x.user_profiles == {"u1": {"age": "24", "gender": "M"}, "u2": {"gender": "F"}}
    # items: token_seq columns by default; token columns on request
    assert x.item_features == {"i1": {"class": ["Animation", "Comedy"]}, "i2": {"class": ["Drama"]}, "i3": {}}
    chosen = load_interactions(path, user_features=["gender"], item_features=["release_year"])
    assert chosen.user_profiles["u1"] == {"gender": "M"}
    assert chosen.item_features["i2"] == {"release_year": ["1994"]}
    assert load_interactions(path, user_features=[], item_features=[]).user_profiles == {"u1": {}, "u2": {}}


def test_high_cardinality_side_columns_are_left_out_by_default(tmp_path):
    n = MIN_DISTINCT_CAP + 50
    (tmp_path / "log.inter").write_text("user_id:token\titem_id:token\n" + "".join(f"u{i}\ti1\n" for i in range(n)))
    (tmp_path / "log.user").write_text("user_id:token\tzip:token\tgender:token\n" + "".join(f"u{i}\t{10000 + i}\t{'MF'[i % 2]}\n" for i in range(n)))
    x = load_interactions(tmp_path / "log.inter")
    assert x.user_profiles["u3"] == {"gender": "F"}
    assert load_interactions(tmp_path / "log.inter", user_features=["zip"]).user_profiles["u3"] == {"zip": "10003"}
    assert is_dense_enough(MIN_DISTINCT_CAP, 10) and not is_dense_enough(MIN_DISTINCT_CAP + 1, 10)


def test_generic_csv_with_named_columns_iso_times_and_features():
    x = load_interactions(FIXTURES / "generic" / "clicks.csv", user_col="visitor", item_col="product",
                          time_col="when", item_features=["note"])
    assert columns(x)[:2] == (["v1", "v1", "v2"], ["p1", "p2", "p1"])
    assert x.timestamps[1] < x.timestamps[0]  # ISO-8601 dates parsed in time order
    assert x.timestamps[2] == 1704200000.0
    assert x.item_features["p1"] == {"note": ["hello, world"]}  # quoted separator kept


def test_generic_tsv_without_time_column_uses_file_order():
    x = load_interactions(FIXTURES / "generic" / "events.tsv")
    assert columns(x) == (["b", "a", "b"], ["x", "y", "z"], [0.0, 1.0, 2.0])


def test_tsv_cells_are_not_quoted(tmp_path):
    path = tmp_path / "log.tsv"
    path.write_text('user\titem\ttitle\n1\t2\t"Quoted" start\n1\t3\t5" floppy\n')
    x = load_interactions(path, item_features=["title"])
    assert x.item_features == {"2": {"title": ['"Quoted" start']}, "3": {"title": ['5" floppy']}}


def test_parquet_table(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    path = tmp_path / "log.parquet"
    pq.write_table(pa.table({"userId": [1, 1, 2], "movieId": [5, 6, 5], "ts": [3.0, 1.0, 2.0]}), path)
    assert columns(load_interactions(path)) == (["1", "1", "2"], ["5", "6", "5"], [3.0, 1.0, 2.0])
    pq.write_table(pa.table({"user": ["a", None], "item": ["x", "y"]}), path)
    with pytest.raises(DataFormatError, match=r"log\.parquet:2: empty user id"):
        load_interactions(path)


def test_windows_line_endings_and_byte_order_mark(tmp_path):
    path = tmp_path / "export.csv"
    path.write_bytes(b"\xef\xbb\xbfuserId,movieId,timestamp\r\n1,2,3\r\n1,4,5\r\n")
    assert columns(load_interactions(path)) == (["1", "1"], ["2", "4"], [3.0, 5.0])
    inter = tmp_path / "log.inter"
    inter.write_bytes(b"\xef\xbb\xbfuser_id:token\titem_id:token\r\nu\ti\r\n")
    assert columns(load_interactions(inter)) == (["u"], ["i"], [0.0])


def test_folder_with_one_interaction_file_is_accepted():
    assert len(load_interactions(FIXTURES / "recbole")) == 4


# (file name, content, 1-based line at fault or None, words the message must hold[, fmt])
MALFORMED = [
    ("u.data", "1\t10\t5\t100\n2\t20\t3\n", 2, "expected 4 columns, found 3"),
    ("u.data", "1\t10\t5\t100\n\n1\t11\t5\tyesterday\n", 3, "timestamp 'yesterday'"),
    ("u.data", "\t10\t5\t100\n", 1, "empty user id"),
    ("ratings.dat", "1::2::3::4\n1::3::3::4\n1::4::3\n", 3, "expected 4 columns, found 3"),
    ("ratings.csv", "user,movieId,rating,timestamp\n1,2,3,4\n", 1, "missing required column 'userId'", "movielens-csv"),
    ("ratings.csv", "userId,movieId,rating,timestamp\n1,2,3,4\n1,,3,5\n", 3, "empty item id"),
    ("log.inter", "", 1, "empty file"),
    ("log.inter", "uid_x:token\titem_id:token\nu\ti\n", 1, "missing required column 'user_id'"),
    ("log.inter", "user_id:tokn\titem_id:token\n", 1, "unknown type 'tokn'"),
    ("log.inter", "user_id:token\titem_id:token\ttimestamp:float\nu\ti\t1\nu\ti\tnan\n", 3, "not finite"),
    ("log.inter", "user_id:token\titem_id:token\n", None, "no interaction rows"),
    ("log.csv", "who,item\n1,2\n", 1, "missing required user column"),
    ("log.csv", 'user,item,time\n1,2,3\n1,3,4\n"1,4,5\n', 4, "bad CSV quoting"),
    ("log.csv", "user,item,time\n1,2,3\n1,3\n", 3, "expected 3 columns, found 2"),
    ("log.tsv", "user\titem\n1\t\n", 2, "empty item id"),
    ("log.xyz", "a b c\n", None, "unknown format"),
]


@pytest.mark.parametrize("case", MALFORMED, ids=[f"{m[0]}:{m[3]}" for m in MALFORMED])
def test_malformed_files_name_file_line_and_problem(tmp_path, case):
    name, content, line, problem, *fmt = case
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(DataFormatError) as info:
        load_interactions(path, fmt=fmt[0] if fmt else None)
    where = f"{path}:{line}: " if line is not None else f"{path}: "
    assert str(info.value).startswith(where), str(info.value)
    assert problem in str(info.value)
    assert info.value.line == line


def test_malformed_side_files_are_named(tmp_path):
    (tmp_path / "u.data").write_text("1\t10\t5\t100\n")
    (tmp_path / "u.user").write_text("1|24|M|technician|85711\n2|53|F\n")
    with pytest.raises(DataFormatError, match=r"u\.user:2: expected 5 columns, found 3"):
        load_interactions(tmp_path / "u.data")
    (tmp_path / "x.inter").write_text("user_id:token\titem_id:token\nu\ti\n")
    (tmp_path / "x.item").write_text("item_id:token\tclass:token_seq\ni\tA B\n\tC\n")
    with pytest.raises(DataFormatError, match=r"x\.item:3: empty id"):
        load_interactions(tmp_path / "x.inter")
    (tmp_path / "x.item").write_text("item_id:token\tclass:token_seq\ni\tA B\n")
    assert load_interactions(tmp_path / "x.inter").item_features == {"i": {"class": ["A", "B"]}}
    with pytest.raises(DataFormatError, match=r"x\.user: features \['age'\] requested"):
        load_interactions(tmp_path / "x.inter", user_features=["age"])


def test_undecodable_bytes_name_the_line(tmp_path):
    path = tmp_path / "log.inter"
    path.write_bytes(b"user_id:token\titem_id:token\nu\ti\nu\t\xff\xfe\n")
    with pytest.raises(DataFormatError, match=r"log\.inter:3: not valid utf-8"):
        load_interactions(path)


def test_missing_path_and_unknown_fmt():
    with pytest.raises(FileNotFoundError, match="nowhere.inter"):
        load_interactions("nowhere.inter")
    with pytest.raises(DataFormatError, match=r"movielens-100k has fixed columns, so \['time_col'\] cannot apply"):
        load_interactions(FIXTURES / "ml-100k" / "u.data", time_col="when")
    with pytest.raises(DataFormatError, match="unknown format 'excel'"):
        load_interactions(FIXTURES / "generic" / "events.tsv", fmt="excel")


def test_hundred_thousand_lines_stream(tmp_path):
    """Loading speed is measured in bench/; here only that a large file loads whole."""
    path = tmp_path / "big.inter"
    rows = "".join(f"u{i % 900}\ti{i % 1700}\t{i}\n" for i in range(100_000))
    path.write_text("user_id:token\titem_id:token\ttimestamp:float\n" + rows)
    x = load_interactions(path)
    assert len(x) == 100_000 and x.item_ids[-1] == f"i{99_999 % 1700}"


def test_parquet_number_and_date_cells_read_as_python_writes_them(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq
    from datetime import datetime

    path = tmp_path / "log.parquet"
    when = [datetime(2024, 1, 2), datetime(2024, 1, 1), datetime(2024, 1, 3)]
    pq.write_table(pa.table({"user": [1.0, 1.0, 2.0], "item": [5, 6, 5], "time": when, "shelf": [0, 3, 9],
                             "unused": ["a", "b", "c"]}), path)
    x = load_interactions(path, item_features=["shelf"])
    assert columns(x)[:2] == (["1.0", "1.0", "2.0"], ["5", "6", "5"])  # str() of the numbers
    assert x.timestamps.tolist() == [w.timestamp() for w in when]
    assert x.item_features == {"5": {"shelf": ["0"]}, "6": {"shelf": ["3"]}}
