"""Hand-written SELECTs read back into model instances, for the statements every request runs."""

from django.db import DEFAULT_DB_ALIAS, connections, models


def fetch_one(sql: str, params: list, using: str = DEFAULT_DB_ALIAS) -> tuple | None:
    with connections[using].cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchone()


class SelectedColumns:
    """A model's columns in a hand-written SELECT, and the instance made back from them exactly as the
    ORM makes it (the backend's and the fields' converters: JSON text, SQLite dates and booleans).

    For the few statements that every request runs, where building and compiling the ORM query costs
    several times what running it does (the API token look-up: 2.3M instructions through the ORM,
    0.35M for the statement and its row).
    """

    def __init__(self, model: type[models.Model], alias: str):
        self.model, self.alias = model, alias
        self.fields = model._meta.concrete_fields
        self.width = len(self.fields)
        self._attnames = [f.attname for f in self.fields]
        self._pk_index = self.fields.index(model._meta.pk)
        self._converters: dict[str, list] = {}  # per database alias
        self.sql = ", ".join(self._qualified(f) for f in self.fields)  # the SELECT list

    @property
    def table(self) -> str:
        """For FROM / JOIN: the model's table under this alias."""
        return f'"{self.model._meta.db_table}" {self.alias}'

    def column(self, name: str) -> str:
        """A field's column under this alias ("pk" names the primary key)."""
        return self._qualified(self.model._meta.pk if name == "pk" else self.model._meta.get_field(name))

    def _qualified(self, field) -> str:
        return f'{self.alias}."{field.column}"'

    def instance(self, row, start: int = 0, using: str = DEFAULT_DB_ALIAS) -> models.Model | None:
        """The instance in row[start:start + width]; None when its primary key is NULL (a LEFT JOIN found none)."""
        if row[start + self._pk_index] is None:
            return None
        connection = connections[using]
        converters = self._converters.get(using)
        if converters is None:
            converters = self._converters[using] = [
                (i, convs, col)
                for i, col in enumerate(f.get_col(self.alias) for f in self.fields)
                if (convs := connection.ops.get_db_converters(col) + col.get_db_converters(connection))
            ]
        values = list(row[start : start + self.width])
        for i, convs, col in converters:
            for convert in convs:
                values[i] = convert(values[i], col, connection)
        return self.model.from_db(using, self._attnames, values)
