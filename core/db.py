"""Database-enforced immutability, as a migration operation that works on PostgreSQL and SQLite.

`ProtectRows("registry_modelversion", columns=[...])` makes the listed columns unchangeable and the
rows undeletable; without `columns`, the whole row is append-only. The triggers fire for raw SQL
too, so no code path (ORM, admin, a DBA's psql session) can rewrite history. A later migration widens a
list by applying ProtectRows again with `replaces=` the list before it, which migrating back restores (not
no protection at all).
"""

from django.db.migrations.operations.base import Operation


class ProtectRows(Operation):
    reversible = True
    reduces_to_sql = True

    def __init__(
        self,
        table: str,
        *,
        columns: list[str] | None = None,
        message: str | None = None,
        replaces: list[str] | None = None,
    ):
        self.table = table
        self.columns = list(columns or [])
        self.message = message or f"{table} is append-only: its rows cannot be changed or deleted"
        self.replaces = None if replaces is None else list(replaces)  # the column list in force before this one

    def deconstruct(self):
        kwargs = {"columns": self.columns} if self.columns else {}
        if self.message != f"{self.table} is append-only: its rows cannot be changed or deleted":
            kwargs["message"] = self.message
        if self.replaces is not None:
            kwargs["replaces"] = self.replaces
        return self.__class__.__qualname__, [self.table], kwargs

    def state_forwards(self, app_label, state):
        pass

    def describe(self):
        return f"Protect rows of {self.table} against UPDATE/DELETE"

    @property
    def _name(self) -> str:
        return f"{self.table}_protect"

    def _update_condition(self, distinct: str) -> str:
        return " OR ".join(f"OLD.{c} {distinct} NEW.{c}" for c in self.columns)

    def _forwards_sql(self, vendor: str) -> list[str]:
        # Dropping first makes the operation re-runnable: a later migration widens the column list
        # by applying ProtectRows again on the same table.
        msg = self.message.replace("'", "''")
        name = self._name
        drops = [sql for sql in self._backwards_sql(vendor) if "FUNCTION" not in sql]
        if vendor == "postgresql":
            when = f"WHEN ({self._update_condition('IS DISTINCT FROM')})" if self.columns else ""
            return [
                *drops,
                f"""CREATE OR REPLACE FUNCTION {name}_reject() RETURNS trigger LANGUAGE plpgsql AS $$
                BEGIN RAISE EXCEPTION '{msg}' USING ERRCODE = 'restrict_violation'; END; $$""",
                f"CREATE TRIGGER {name}_update BEFORE UPDATE ON {self.table} FOR EACH ROW {when} "
                f"EXECUTE FUNCTION {name}_reject()",
                f"CREATE TRIGGER {name}_delete BEFORE DELETE ON {self.table} FOR EACH ROW "
                f"EXECUTE FUNCTION {name}_reject()",
            ]
        if vendor == "sqlite":
            when = f"WHEN ({self._update_condition('IS NOT')})" if self.columns else ""
            return [
                *drops,
                f"CREATE TRIGGER {name}_update BEFORE UPDATE ON {self.table} FOR EACH ROW {when} "
                f"BEGIN SELECT RAISE(ABORT, '{msg}'); END",
                f"CREATE TRIGGER {name}_delete BEFORE DELETE ON {self.table} FOR EACH ROW "
                f"BEGIN SELECT RAISE(ABORT, '{msg}'); END",
            ]
        raise NotImplementedError(f"ProtectRows supports PostgreSQL and SQLite, not {vendor}")

    def _backwards_sql(self, vendor: str) -> list[str]:
        name = self._name
        if vendor == "postgresql":
            return [
                f"DROP TRIGGER IF EXISTS {name}_update ON {self.table}",
                f"DROP TRIGGER IF EXISTS {name}_delete ON {self.table}",
                f"DROP FUNCTION IF EXISTS {name}_reject()",
            ]
        return [f"DROP TRIGGER IF EXISTS {name}_update", f"DROP TRIGGER IF EXISTS {name}_delete"]

    def database_forwards(self, app_label, schema_editor, from_state, to_state):
        for sql in self._forwards_sql(schema_editor.connection.vendor):
            schema_editor.execute(sql, params=None)

    def database_backwards(self, app_label, schema_editor, from_state, to_state):
        if self.replaces is not None:  # back to the protection this one widened
            previous = ProtectRows(self.table, columns=self.replaces, message=self.message)
            previous.database_forwards(app_label, schema_editor, from_state, to_state)
            return
        for sql in self._backwards_sql(schema_editor.connection.vendor):
            schema_editor.execute(sql, params=None)


class BlockTruncate(Operation):
    """PostgreSQL: refuse TRUNCATE of `table` (row triggers do not fire for it), unless the session has
    said `SET registry.allow_truncate = on` and its role owns the table (or is a superuser). The test suite
    says so on its own connections, because Django's test flush truncates every table; nothing in the service
    does. The owner could disable the trigger anyway; a role granted only TRUNCATE could, with the setting
    alone (any session may set it, even in its connection string), empty the audit log and have its chain
    start again at genesis. SQLite has no TRUNCATE."""

    reversible = True
    reduces_to_sql = True
    SETTING = "registry.allow_truncate"

    def __init__(self, table: str, *, message: str | None = None):
        self.table = table
        self.message = message or f"{table} cannot be truncated"

    def deconstruct(self):
        kwargs = {"message": self.message} if self.message != f"{self.table} cannot be truncated" else {}
        return self.__class__.__qualname__, [self.table], kwargs

    def state_forwards(self, app_label, state):
        pass

    def describe(self):
        return f"Refuse TRUNCATE of {self.table}"

    def database_forwards(self, app_label, schema_editor, from_state, to_state):
        if schema_editor.connection.vendor != "postgresql":
            return
        name = f"{self.table}_no_truncate"
        for sql in (
            self._function_sql(),
            f"DROP TRIGGER IF EXISTS {name} ON {self.table}",
            f"CREATE TRIGGER {name} BEFORE TRUNCATE ON {self.table} FOR EACH STATEMENT EXECUTE FUNCTION {name}()",
        ):
            schema_editor.execute(sql, params=None)

    def _function_sql(self) -> str:
        name, msg = f"{self.table}_no_truncate", self.message.replace("'", "''")
        # pg_has_role(..., 'MEMBER') is true for a superuser too
        return f"""CREATE OR REPLACE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF current_setting('{self.SETTING}', true) IS DISTINCT FROM 'on'
                   OR NOT pg_has_role(current_user, (SELECT relowner FROM pg_class WHERE oid = TG_RELID), 'MEMBER')
                THEN
                    RAISE EXCEPTION '{msg}' USING ERRCODE = 'restrict_violation';
                END IF;
                RETURN NULL;
            END $$"""  # noqa: S608 - the table and message come from migrations, not from input

    def database_backwards(self, app_label, schema_editor, from_state, to_state):
        if schema_editor.connection.vendor != "postgresql":
            return
        name = f"{self.table}_no_truncate"
        schema_editor.execute(f"DROP TRIGGER IF EXISTS {name} ON {self.table}", params=None)
        schema_editor.execute(f"DROP FUNCTION IF EXISTS {name}()", params=None)


class RenewTruncateGuard(BlockTruncate):
    """Replace the function of an existing BlockTruncate with the current one (the setting alone no longer allows a
    TRUNCATE: the table's owner must ask). Migrating back keeps the stricter function: nothing to undo."""

    def describe(self):
        return f"Renew the TRUNCATE guard of {self.table}"

    def database_forwards(self, app_label, schema_editor, from_state, to_state):
        if schema_editor.connection.vendor == "postgresql":
            schema_editor.execute(self._function_sql(), params=None)

    def database_backwards(self, app_label, schema_editor, from_state, to_state):
        pass
