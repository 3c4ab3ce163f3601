"""A comparable snapshot of everything pgqueue defines in the PostgreSQL catalogs.

Two databases built by different routes (``sql/*.sql`` vs. the alembic revisions)
must give equal snapshots. Each section is a sorted list of plain tuples/strings
so that a difference prints as a readable line diff (see :func:`diff`).
"""

from __future__ import annotations

import difflib
from typing import Any

import psycopg

SCHEMA = "pgqueue"
VERSION_TABLE = "pgqueue_alembic_version"

# Every query takes the schema name as %(schema)s and the excluded table as %(skip)s.
_SECTIONS: dict[str, str] = {
    "schemas": """
        SELECT n.nspname
          FROM pg_namespace n
         WHERE n.nspname = %(schema)s
    """,
    "relations": """
        SELECT c.relname, c.relkind::text, c.relpersistence::text
          FROM pg_class c
          JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = %(schema)s
           AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S')
           AND c.relname <> %(skip)s
         ORDER BY 1
    """,
    # Columns by their position among live columns, so the order (which
    # ``SELECT *`` and %%ROWTYPE depend on) is compared too.
    "columns": """
        SELECT c.relname,
               row_number() OVER (PARTITION BY c.oid ORDER BY a.attnum) AS position,
               a.attname,
               format_type(a.atttypid, a.atttypmod) AS type,
               a.attnotnull,
               pg_get_expr(d.adbin, d.adrelid) AS default_expr,
               a.attidentity::text,
               a.attgenerated::text,
               co.collname
          FROM pg_attribute a
          JOIN pg_class c ON c.oid = a.attrelid
          JOIN pg_namespace n ON n.oid = c.relnamespace
          LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
          LEFT JOIN pg_collation co ON co.oid = a.attcollation AND a.attcollation <> 0
         WHERE n.nspname = %(schema)s
           AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
           AND c.relname <> %(skip)s
           AND a.attnum > 0
           AND NOT a.attisdropped
         ORDER BY 1, 2
    """,
    "constraints": """
        SELECT c.relname, k.conname, k.contype::text, pg_get_constraintdef(k.oid, true),
               k.condeferrable, k.condeferred, k.convalidated
          FROM pg_constraint k
          JOIN pg_class c ON c.oid = k.conrelid
          JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = %(schema)s
           AND c.relname <> %(skip)s
         ORDER BY 1, 2
    """,
    "indexes": """
        SELECT t.relname, i.relname, pg_get_indexdef(x.indexrelid)
          FROM pg_index x
          JOIN pg_class i ON i.oid = x.indexrelid
          JOIN pg_class t ON t.oid = x.indrelid
          JOIN pg_namespace n ON n.oid = t.relnamespace
         WHERE n.nspname = %(schema)s
           AND t.relname <> %(skip)s
         ORDER BY 1, 2
    """,
    "sequences": """
        SELECT s.sequencename, s.data_type::text, s.start_value, s.increment_by,
               s.min_value, s.max_value, s.cycle, s.cache_size
          FROM pg_sequences s
         WHERE s.schemaname = %(schema)s
         ORDER BY 1
    """,
    "types": """
        SELECT t.typname, t.typtype::text
          FROM pg_type t
          JOIN pg_namespace n ON n.oid = t.typnamespace
         WHERE n.nspname = %(schema)s
           AND t.typtype IN ('e', 'd', 'c', 'r', 'm')
           -- composite row types of tables are covered by "relations"
           AND NOT (t.typtype = 'c' AND EXISTS (
                   SELECT 1 FROM pg_class c WHERE c.oid = t.typrelid AND c.relkind <> 'c'))
         ORDER BY 1
    """,
    "enum_labels": """
        SELECT t.typname,
               row_number() OVER (PARTITION BY t.oid ORDER BY e.enumsortorder) AS position,
               e.enumlabel
          FROM pg_enum e
          JOIN pg_type t ON t.oid = e.enumtypid
          JOIN pg_namespace n ON n.oid = t.typnamespace
         WHERE n.nspname = %(schema)s
         ORDER BY 1, 2
    """,
    # pg_get_functiondef covers the signature, return type, language,
    # volatility, strictness, settings and the body.
    "functions": """
        SELECT p.proname,
               pg_get_function_identity_arguments(p.oid),
               pg_get_function_result(p.oid),
               p.prokind::text,
               md5(pg_get_functiondef(p.oid)) AS definition_md5
          FROM pg_proc p
          JOIN pg_namespace n ON n.oid = p.pronamespace
         WHERE n.nspname = %(schema)s
         ORDER BY 1, 2
    """,
    "triggers": """
        SELECT c.relname, t.tgname, pg_get_triggerdef(t.oid, true), t.tgenabled::text
          FROM pg_trigger t
          JOIN pg_class c ON c.oid = t.tgrelid
          JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = %(schema)s
           AND NOT t.tgisinternal
         ORDER BY 1, 2
    """,
    "table_comments": """
        SELECT c.relname, a.attname, col_description(c.oid, a.attnum)
          FROM pg_class c
          JOIN pg_namespace n ON n.oid = c.relnamespace
          JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
         WHERE n.nspname = %(schema)s
           AND c.relname <> %(skip)s
           AND col_description(c.oid, a.attnum) IS NOT NULL
         ORDER BY 1, 2
    """,
}

Snapshot = dict[str, list[tuple[Any, ...]]]


def snapshot(dsn: str, schema: str = SCHEMA) -> Snapshot:
    """The catalog snapshot of ``schema`` in the database at ``dsn``, without
    pgqueue's alembic version table."""
    params = {"schema": schema, "skip": VERSION_TABLE}
    with psycopg.connect(dsn, autocommit=True) as conn:
        return {
            name: [tuple(row) for row in conn.execute(sql, params).fetchall()]  # type: ignore[arg-type]
            for name, sql in _SECTIONS.items()
        }


def _lines(snap: Snapshot) -> list[str]:
    out: list[str] = []
    for section in sorted(snap):
        out.append(f"[{section}]")
        out.extend(f"  {row!r}" for row in snap[section])
    return out


def diff(a: Snapshot, b: Snapshot, a_name: str = "a", b_name: str = "b") -> str:
    """A unified diff of two snapshots (empty when they are equal)."""
    return "\n".join(
        difflib.unified_diff(_lines(a), _lines(b), fromfile=a_name, tofile=b_name, lineterm="")
    )
