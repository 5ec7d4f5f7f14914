-- Named queries of the embedded PostgreSQL's bootstrap (dispatcher/services.py): run on the
-- server's maintenance database, before paydispatch's own database or schema exists. Each block
-- starts with `-- name --`.

-- embedded_database_exists --
SELECT 1 FROM pg_database WHERE datname = %(name)s

-- create_database --
-- {} is the database's name, quoted by psycopg.sql.Identifier (DDL takes no parameters).
CREATE DATABASE {}
