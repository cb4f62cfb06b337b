-- The oracle corpus's additions for PostgreSQL 17 and later (run after native_corpus.sql;
-- tests/it/native.rs, tests/it/matrix.rs). Group, as the test configures it:
--   pg17  app.readings (+ its two partitions)   a partitioned table with its own table access
--                                               method (17: ALTER TABLE … SET ACCESS METHOD
--                                               on a partitioned table; its partitions
--                                               created afterwards inherit it)

CREATE TABLE app.readings (id integer NOT NULL, at date NOT NULL, v numeric,
                           note text DEFAULT 'r') PARTITION BY RANGE (at);
CREATE TABLE app.readings_old PARTITION OF app.readings
    FOR VALUES FROM (MINVALUE) TO ('2024-01-01');
ALTER TABLE app.readings SET ACCESS METHOD heap;
CREATE TABLE app.readings_new PARTITION OF app.readings
    FOR VALUES FROM ('2024-01-01') TO (MAXVALUE);
ALTER TABLE app.readings ADD PRIMARY KEY (id, at);
COMMENT ON TABLE app.readings IS 'partitioned, with an access method';
GRANT SELECT ON app.readings TO __READER__;
INSERT INTO app.readings (id, at, v) VALUES
  (1, '2020-01-01', 1.5), (2, '2025-01-01', NULL), (3, '2024-01-01', -2);
