"""Database: engine, sessions and the models of DESIGN §3."""

from appliance.db.engine import Database, create_database

__all__ = ["Database", "create_database"]
