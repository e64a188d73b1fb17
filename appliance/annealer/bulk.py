"""Set-based statements over many rows without per-row SQLAlchemy work: INSERTs through the DBAPI's
executemany, and id lists passed as one parameter.

SQLAlchemy's executemany builds a parameter dict per row and runs every bind processor on it; for the
annealer's event and run records that cost more than the database did (profiled: ~60 % of a batch).
Values are converted with the column types' own bind processors, column by column and once per
distinct object, so what is stored is exactly what the ORM would store and reads back the same.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import cache
from typing import Any

from sqlalchemy import (
    ARRAY,
    ColumnElement,
    Connection,
    Integer,
    String,
    Table,
    any_,
    bindparam,
    func,
    literal_column,
    select,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import Session


def dialect_of(db: Session | Connection) -> Dialect:
    return db.get_bind().dialect if isinstance(db, Session) else db.dialect


def in_ids(column: Any, name: str, dialect: Dialect) -> ColumnElement[bool]:
    """`column IN <the ids bound as parameter name>`, as one parameter rather than one per id.

    A thousand `?` cost more to render and bind than the UPDATE they feed (profiled); SQLite reads a
    JSON array through json_each, PostgreSQL takes an array.
    """
    if dialect.name == "postgresql":
        return column == any_(bindparam(name, type_=ARRAY(Integer)))  # type: ignore[no-any-return]
    values: Any = select(literal_column("value")).select_from(func.json_each(bindparam(name, type_=String)))
    return column.in_(values)  # type: ignore[no-any-return]


def ids_value(ids: Iterable[int], dialect: Dialect) -> Any:
    return list(ids) if dialect.name == "postgresql" else json.dumps(list(ids))


@cache
def _processors(
    table: Table, columns: tuple[str, ...], dialect: Dialect
) -> list[Callable[[Any], Any] | None]:
    return [table.c[name].type._cached_bind_processor(dialect) for name in columns]


def _convert(values: Sequence[Any], proc: Callable[[Any], Any] | None) -> Sequence[Any]:
    if proc is None:
        return values
    memo: dict[int, Any] = {}  # the rows keep every value alive, so ids stay unique during the call
    out: list[Any] = []
    for value in values:
        if value is None:
            out.append(None)
            continue
        key = id(value)
        if key not in memo:
            memo[key] = proc(value)
        out.append(memo[key])
    return out


def insert_rows(
    db: Session | Connection,
    table: Table,
    columns: Sequence[str],
    rows: Sequence[Sequence[Any]],
    constants: Mapping[str, Any] | None = None,
) -> None:
    """INSERT `rows` (values for `columns`), each also carrying the same `constants`."""
    if not rows:
        return
    conn = db.connection() if isinstance(db, Session) else db
    dialect = conn.dialect
    constants = constants or {}
    fixed_procs = _processors(table, tuple(constants), dialect)
    fixed = tuple(_convert([value], p)[0] for value, p in zip(constants.values(), fixed_procs, strict=True))
    procs = _processors(table, tuple(columns), dialect)
    varying = [_convert(col, p) for col, p in zip(zip(*rows, strict=True), procs, strict=True)]
    converted = [fixed + row for row in zip(*varying, strict=True)]
    names = [*constants, *columns]
    quoted = ", ".join(dialect.identifier_preparer.quote(c) for c in names)
    if dialect.paramstyle == "qmark":  # SQLite: executemany of a prepared statement is its fast path
        marks = ", ".join(["?"] * len(names))
        conn.exec_driver_sql(f"INSERT INTO {table.name} ({quoted}) VALUES ({marks})", converted)
        return
    # PostgreSQL: one statement whatever the row count, each varying column sent as one array;
    # psycopg's executemany cost ~230 µs a row here (measured), this costs a few µs.
    types = _pg_types(table, tuple(names), dialect)
    fixed_sql = [f"%s::{types[i]}" for i in range(len(fixed))]
    arrays = [f"%s::{types[len(fixed) + i]}[]" for i in range(len(columns))]
    sql = f"INSERT INTO {table.name} ({quoted}) SELECT {', '.join([*fixed_sql, 'u.*'])} FROM unnest({', '.join(arrays)}) AS u"
    conn.exec_driver_sql(sql, (*fixed, *(list(col) for col in varying)))


@cache
def _pg_types(table: Table, names: tuple[str, ...], dialect: Dialect) -> list[str]:
    return [table.c[name].type.compile(dialect=dialect) for name in names]
