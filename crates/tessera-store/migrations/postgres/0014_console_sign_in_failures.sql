-- Failed console sign-ins, counted once for the installation: console admins belong to no
-- deployment, so their counters must not multiply with the deployments whose hosts a request
-- can name. The counters kept per deployment until now are merged (the latest window, the
-- failures of all).
CREATE TABLE console_sign_in_failures (
    bucket       TEXT PRIMARY KEY,
    window_start BIGINT NOT NULL,
    failures     BIGINT NOT NULL
);
INSERT INTO console_sign_in_failures (bucket, window_start, failures)
SELECT bucket, MAX(window_start), SUM(failures) FROM sign_in_failures
WHERE bucket LIKE 'console:%' OR bucket LIKE 'console-ip:%'
GROUP BY bucket;
DELETE FROM sign_in_failures WHERE bucket LIKE 'console:%' OR bucket LIKE 'console-ip:%';
