-- The oracle corpus (tests/it/native.rs): tables, their dependents and their rows, run after
-- native_prereq.sql (same role placeholders). Groups, as the test configures them:
--   orders  app.customers, app.orders, app.orders_audit   FK inside the group, rule, trigger,
--                                                          serial, identity, generated column,
--                                                          exclusion constraint, statistics
--   ledger  app.ledger                                     FK into "orders", RLS, policies,
--                                                          dropped column, other owner
--   events  app.events (+ its three partitions)            partitioned, partitioned index + PK
--   inherit app.vehicles, app.cars                         inheritance parent + child
--   big     app.big                                        300 000 rows, many compressed chunks, split
--   misc    app.empty_one, app.no_columns, app.scratchpad  no rows, no columns, unlogged
-- and every other table ungrouped (each its own group). app.standalone_seq belongs to no
-- group; the publication and the extended statistics object are not tables.

-- group "orders" ------------------------------------------------------------------------------
CREATE TABLE app.customers (
    id serial PRIMARY KEY,
    email text NOT NULL UNIQUE,
    mood app.mood DEFAULT 'ok',
    score app.posint,
    addr app.pair,
    moods app.mood[],
    note text,
    referrer integer REFERENCES app.customers (id),
    created timestamptz NOT NULL DEFAULT '2020-01-01 00:00:00+00',
    CONSTRAINT email_has_at CHECK (email LIKE '%@%')
) WITH (fillfactor = 80);
CREATE TABLE app.orders (
    id bigint GENERATED ALWAYS AS IDENTITY (START WITH 1000 INCREMENT BY 5) PRIMARY KEY,
    customer_id integer NOT NULL REFERENCES app.customers (id) ON DELETE CASCADE
        DEFERRABLE INITIALLY DEFERRED,
    qty integer NOT NULL DEFAULT 1,
    price numeric(10,2) NOT NULL,
    total numeric GENERATED ALWAYS AS (qty * price) STORED,
    half numeric GENERATED ALWAYS AS (app.half(price)) STORED,
    during tsrange,
    updated timestamptz,
    CONSTRAINT no_overlap EXCLUDE USING gist (during WITH &&)
);
CREATE INDEX orders_big ON app.orders (customer_id) WHERE qty > 10;
CREATE INDEX orders_lower ON app.orders ((lower(price::text)), (qty + 1));
CREATE UNIQUE INDEX orders_cust_during ON app.orders (customer_id, during) INCLUDE (qty);
ALTER TABLE app.orders CLUSTER ON orders_pkey;
CREATE TRIGGER orders_touch BEFORE UPDATE ON app.orders
    FOR EACH ROW EXECUTE FUNCTION app.touch();
CREATE TRIGGER orders_keep AFTER INSERT ON app.orders
    FOR EACH ROW WHEN (NEW.qty > 100) EXECUTE FUNCTION app.keep();
ALTER TABLE app.orders DISABLE TRIGGER orders_keep;
CREATE TABLE app.orders_audit (id bigint, qty integer, at timestamptz DEFAULT now());
CREATE RULE orders_log AS ON UPDATE TO app.orders
    DO ALSO INSERT INTO app.orders_audit (id, qty) VALUES (NEW.id, NEW.qty);
COMMENT ON TABLE app.orders IS 'orders; with a comment';
COMMENT ON COLUMN app.orders.qty IS 'how many';
COMMENT ON CONSTRAINT email_has_at ON app.customers IS 'must look like mail';
COMMENT ON INDEX app.orders_big IS 'big ones';
COMMENT ON TRIGGER orders_touch ON app.orders IS 'stamps updated';
COMMENT ON RULE orders_log ON app.orders IS 'keeps a trail';
COMMENT ON SEQUENCE app.customers_id_seq IS 'customer numbers';
GRANT SELECT ON app.orders TO __READER__;
GRANT SELECT, INSERT ON app.orders_audit TO __READER__ WITH GRANT OPTION;
REVOKE TRUNCATE ON app.orders_audit FROM postgres;
GRANT SELECT (id, email), UPDATE (note) ON app.customers TO __READER__;
GRANT USAGE ON SEQUENCE app.customers_id_seq TO __READER__;
ALTER TABLE app.orders ALTER COLUMN price SET STATISTICS 500;
ALTER TABLE app.customers ALTER COLUMN note SET STORAGE EXTERNAL;
ALTER TABLE app.customers REPLICA IDENTITY FULL;
CREATE STATISTICS app.orders_stats (dependencies, ndistinct) ON customer_id, qty FROM app.orders;

-- group "ledger" ------------------------------------------------------------------------------
CREATE TABLE app.ledger (
    id serial PRIMARY KEY,
    customer_id integer REFERENCES app.customers (id),
    gone text,
    amount numeric NOT NULL,
    memo text
);
ALTER TABLE app.ledger DROP COLUMN gone;
ALTER TABLE app.ledger OWNER TO __OWNER__;
ALTER TABLE app.ledger ENABLE ROW LEVEL SECURITY;
ALTER TABLE app.ledger FORCE ROW LEVEL SECURITY;
CREATE POLICY ledger_mine ON app.ledger FOR SELECT TO __READER__ USING (amount > 0);
CREATE POLICY ledger_add ON app.ledger AS RESTRICTIVE FOR INSERT WITH CHECK (amount <> 0);
COMMENT ON POLICY ledger_mine ON app.ledger IS 'positive only';
GRANT SELECT ON app.ledger TO __READER__;

-- group "events" ------------------------------------------------------------------------------
CREATE TABLE app.events (id bigint NOT NULL, at date NOT NULL, kind text DEFAULT 'x',
                         payload jsonb) PARTITION BY RANGE (at);
CREATE TABLE app.events_2024 PARTITION OF app.events
    FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
CREATE TABLE app.events_2025 PARTITION OF app.events
    FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
CREATE TABLE app.events_other PARTITION OF app.events DEFAULT;
CREATE INDEX events_at ON app.events (at);
ALTER TABLE app.events ADD PRIMARY KEY (id, at);
CREATE INDEX events_2024_kind ON app.events_2024 (kind);
CREATE TRIGGER events_keep BEFORE UPDATE ON app.events
    FOR EACH ROW EXECUTE FUNCTION app.keep();
COMMENT ON COLUMN app.events.payload IS 'whatever came';
COMMENT ON TABLE app.events_2025 IS 'this year';
GRANT SELECT ON app.events TO __READER__;

-- group "inherit" -----------------------------------------------------------------------------
CREATE TABLE app.vehicles (id integer PRIMARY KEY, name text,
                           CONSTRAINT named CHECK (name <> ''));
CREATE TABLE app.cars (wheels integer DEFAULT 4) INHERITS (app.vehicles);
ALTER TABLE app.cars ADD CONSTRAINT wheels_ok CHECK (wheels BETWEEN 1 AND 8) NOT VALID;

-- group "big" ---------------------------------------------------------------------------------
CREATE TABLE app.big (id integer PRIMARY KEY, v text);

-- group "misc" --------------------------------------------------------------------------------
CREATE TABLE app.empty_one (id integer PRIMARY KEY, v text);
CREATE TABLE app.no_columns ();
CREATE UNLOGGED TABLE app.scratchpad (k text PRIMARY KEY, v bytea);
ALTER TABLE app.scratchpad OWNER TO __OWNER__;

-- ungrouped -----------------------------------------------------------------------------------
CREATE TABLE "My Schema.v2"."Mixed.Case*""T""" (
    "Weird ""col""" text,
    "select" integer,
    x text[],
    grid integer[][],
    "Upper" jsonb
);
COMMENT ON COLUMN "My Schema.v2"."Mixed.Case*""T"""."select" IS 'a keyword';
CREATE TABLE app.texts (id integer PRIMARY KEY, t text, b bytea, j jsonb);
ALTER TABLE app.texts ADD CONSTRAINT t_short CHECK (length(t) < 1000) NOT VALID;

CREATE SEQUENCE app.standalone_seq START 100;
CREATE PUBLICATION oracle_pub FOR TABLE app.orders, app.ledger, app.texts;

-- rows ----------------------------------------------------------------------------------------
INSERT INTO app.customers (email, mood, score, addr, moods, note, referrer) VALUES
  ('a@x', 'happy', 5, ROW(1, 'one'), '{happy,sad}', E'tab\there', NULL),
  ('b@x', 'sad', NULL, NULL, NULL, E'back\\slash and new\nline', 1),
  ('c@x', DEFAULT, 7, ROW(NULL, E'multi\u00e9 byte \u65e5\u672c'), '{}', NULL, 1),
  ('d@x', 'ok', 1, ROW(2, ''), '{ok,NULL}', E'\\N is not null', 2),
  ('e@x', 'ok', 2, ROW(3, E'a,"b"\\c'), NULL, '', NULL);
INSERT INTO app.orders (customer_id, qty, price, during) VALUES
  (1, 3, 9.99, '[2024-01-01,2024-01-02)'), (1, 20, 1.50, '[2024-02-01,2024-02-02)'),
  (2, 1, 100, NULL), (3, 11, 0.01, '[2024-03-01,2024-03-02)');
UPDATE app.orders SET qty = qty + 1, updated = '2024-06-01 12:00:00+00' WHERE id = 1000;
INSERT INTO app.ledger (customer_id, amount, memo) VALUES
  (1, 10, 'first'), (2, -5, NULL), (NULL, 0.5, E'\r\n'), (4, 1e-20, E'\u00fc\u00df\U0001F600');
INSERT INTO app.events VALUES
  (1, '2024-05-05', 'a', '{"a": [1, 2], "s": "t\tab"}'), (2, '2025-06-06', DEFAULT, 'null'),
  (3, '2024-12-31', NULL, NULL), (4, '1999-01-01', 'old', '{"\u00e9": "\\\\"}');
INSERT INTO app.vehicles VALUES (1, 'bike');
INSERT INTO app.cars VALUES (2, 'car', 4), (3, 'trike', 3);
INSERT INTO app.big SELECT g, left(md5(g::text), 12) FROM generate_series(1, 300000) g;
-- Every tenth row updated (its new version goes after the full pages: physical order is no
-- longer key order), and every 5000th made large enough to be TOASTed out of line.
UPDATE app.big SET v = v || '+' WHERE id % 10 = 0;
UPDATE app.big SET v = (SELECT string_agg(md5((id * 1000 + i)::text), '') FROM generate_series(1, 300) i)
 WHERE id % 5000 = 1;
-- Its size known to the plan (as autovacuum would have it): the group takes every slot.
ANALYZE app.big;
INSERT INTO "My Schema.v2"."Mixed.Case*""T""" VALUES
  ('"quoted"', 1, ARRAY['a,b', NULL, 'c"d', 'NULL', ''], '{{1,2},{3,NULL}}', '{"K": true}'),
  (NULL, NULL, NULL, NULL, NULL);
INSERT INTO app.texts VALUES
  (1, E'tab\tin', '\x00ff10', '{"nested": {"a": [null, 1.5e3, "x"]}}'),
  (2, E'back\\slash', '', '[]'),
  (3, E'\\N', NULL, '"\\N"'),
  (4, E'cr\rlf\r\nnl\nend', E'\\x5c4e', 'null'),
  (5, E'\u65e5\u672c\u8a9e \u00e9\u00e8 \U0001F418', '\x', '{"\u00e9": "\u65e5"}'),
  (6, '', NULL, NULL),
  (7, NULL, NULL, NULL),
  (8, E'\\.', '\x2e', '"\\\\."'),
  (9, E'trailing\\', '\x5c', '"\t"'),
  (10, E'\x01\x7f control', '\x0d0a', '{}');
INSERT INTO app.no_columns DEFAULT VALUES;
INSERT INTO app.no_columns DEFAULT VALUES;
INSERT INTO app.no_columns DEFAULT VALUES;
INSERT INTO app.scratchpad VALUES ('k', '\x00ff10'), (E'k\t2', NULL);
SELECT nextval('app.standalone_seq');
SELECT setval('app.ledger_id_seq', 42);
