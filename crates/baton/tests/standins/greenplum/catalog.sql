-- Greenplum stand-in (tests only): the part of a Greenplum 7 catalog Baton
-- reads and changes. psql variables: port, datadir (the coordinator's).
CREATE TABLE gp_segment_configuration (
    dbid int2 PRIMARY KEY, content int2 NOT NULL, role "char" NOT NULL,
    preferred_role "char" NOT NULL, mode "char" NOT NULL, status "char" NOT NULL,
    port int4 NOT NULL, hostname text NOT NULL, address text NOT NULL, datadir text NOT NULL);
INSERT INTO gp_segment_configuration VALUES
    (1, -1, 'p', 'p', 'n', 'u', :port, '127.0.0.1', '127.0.0.1', :'datadir'),
    (2, 0, 'p', 'p', 's', 'u', 6000, 'sdw1', 'sdw1', '/data/primary/gpseg0'),
    (4, 0, 'm', 'm', 's', 'u', 7000, 'sdw2', 'sdw2', '/data/mirror/gpseg0'),
    (3, 1, 'm', 'p', 'n', 'd', 6001, 'sdw2', 'sdw2', '/data/primary/gpseg1'),
    (5, 1, 'p', 'm', 'n', 'u', 7001, 'sdw1', 'sdw1', '/data/mirror/gpseg1');
CREATE FUNCTION gp_add_master_standby(text, text, text, int4) RETURNS int2
LANGUAGE plpgsql AS $$
DECLARE d int2;
BEGIN
    IF coalesce(current_setting('gp_standin.gp_role', true), '') <> 'utility' THEN
        RAISE EXCEPTION 'gp_add_master_standby: only in utility mode';
    END IF;
    IF EXISTS (SELECT 1 FROM gp_segment_configuration WHERE content = -1 AND role = 'm') THEN
        RAISE EXCEPTION 'a standby coordinator is already configured';
    END IF;
    SELECT max(dbid) + 1 INTO d FROM gp_segment_configuration;
    INSERT INTO gp_segment_configuration VALUES (d, -1, 'm', 'm', 's', 'u', $4, $1, $2, $3);
    RETURN d;
END $$;
CREATE FUNCTION gp_remove_master_standby() RETURNS bool
LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM gp_segment_configuration WHERE content = -1 AND role = 'm';
    RETURN true;
END $$;
