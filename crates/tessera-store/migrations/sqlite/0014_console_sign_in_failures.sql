-- Failed console sign-ins, counted once for the installation: console admins belong to no
-- deployment, so their counters must not multiply with the deployments whose hosts a request
-- can name. The counters kept per deployment until now are merged: each bucket keeps its
-- latest window, with the failures every deployment counted in that window.
CREATE TABLE console_sign_in_failures (
    bucket       TEXT PRIMARY KEY,
    window_start INTEGER NOT NULL,
    failures     INTEGER NOT NULL
);
INSERT INTO console_sign_in_failures (bucket, window_start, failures)
SELECT f.bucket, f.window_start, SUM(f.failures) FROM sign_in_failures f
WHERE (f.bucket LIKE 'console:%' OR f.bucket LIKE 'console-ip:%')
  AND f.window_start = (SELECT MAX(g.window_start) FROM sign_in_failures g WHERE g.bucket = f.bucket)
GROUP BY f.bucket, f.window_start;
DELETE FROM sign_in_failures WHERE bucket LIKE 'console:%' OR bucket LIKE 'console-ip:%';
