-- Prerequisites of the oracle corpus (tests/it/native.rs): what a group's archive needs in its
-- restore target but does not carry (pg_dump -t carries no schemas, types, domains or
-- functions). Run on the source database before native_corpus.sql and on every restore target,
-- so that both targets of a comparison are prepared the same way.
--
-- The roles are cluster-wide: the test creates them under unique names and substitutes
-- __READER__ (a grantee) and __OWNER__ (owns some objects) before running this.

CREATE SCHEMA app;
CREATE SCHEMA "My Schema.v2";
GRANT USAGE ON SCHEMA app TO __READER__;
GRANT USAGE, CREATE ON SCHEMA app TO __OWNER__;

CREATE TYPE app.mood AS ENUM ('sad', 'ok', 'happy');
CREATE DOMAIN app.posint AS integer CHECK (VALUE > 0);
CREATE TYPE app.pair AS (a integer, b text);

CREATE FUNCTION app.touch() RETURNS trigger LANGUAGE plpgsql
    AS $$BEGIN NEW.updated := now(); RETURN NEW; END$$;
CREATE FUNCTION app.keep() RETURNS trigger LANGUAGE plpgsql
    AS $$BEGIN RETURN NEW; END$$;
CREATE FUNCTION app.half(numeric) RETURNS numeric LANGUAGE sql IMMUTABLE
    AS $$SELECT $1 / 2$$;
