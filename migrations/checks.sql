-- opsd schema migration 4: the same CHECK constraints, written so that
-- SQLite checks them without building a table.
--
-- SQLite evaluates `x IN ('a','b','c')` with a list of constants by
-- building an in-memory index of the list (its own pager, a zeroed page)
-- each time a statement runs: three times for every INSERT into
-- `operations` (type, status, stop reason) and twice for every UPDATE of
-- its status. In the no-op lifecycle that was about a sixth of the
-- writer's work. `x = 'a' OR x = 'b' OR ...` accepts exactly the same
-- values and costs a few comparisons.
--
-- As in migration 3, the stored table definitions are edited in place
-- (https://sqlite.org/lang_altertable.html#otheralter): every row that
-- satisfied the old checks satisfies the new ones, which are equivalent.
PRAGMA writable_schema = ON;
UPDATE sqlite_master
   SET sql = replace(sql, 'operation_type IN (''dummy'',''command'',''training'',''backtest'',''pipeline'')', '(operation_type = ''dummy'' OR operation_type = ''command'' OR operation_type = ''training'' OR operation_type = ''backtest'' OR operation_type = ''pipeline'')')
 WHERE type = 'table' AND name = 'operations';
UPDATE sqlite_master
   SET sql = replace(sql, 'status IN (''pending'',''resuming'',''running'',''completed'',''failed'',''cancelled'')', '(status = ''pending'' OR status = ''resuming'' OR status = ''running'' OR status = ''completed'' OR status = ''failed'' OR status = ''cancelled'')')
 WHERE type = 'table' AND name = 'operations';
UPDATE sqlite_master
   SET sql = replace(sql, 'stop_reason IN (''user'',''parent'',''shutdown'',''crash'',''error'',''dependency'')', '(stop_reason = ''user'' OR stop_reason = ''parent'' OR stop_reason = ''shutdown'' OR stop_reason = ''crash'' OR stop_reason = ''error'' OR stop_reason = ''dependency'')')
 WHERE type = 'table' AND name = 'operations';
UPDATE sqlite_master
   SET sql = replace(sql, 'checkpoint_type IN (''periodic'',''cancellation'',''shutdown'',''failure'')', '(checkpoint_type = ''periodic'' OR checkpoint_type = ''cancellation'' OR checkpoint_type = ''shutdown'' OR checkpoint_type = ''failure'')')
 WHERE type = 'table' AND name = 'operation_checkpoints';
UPDATE sqlite_master
   SET sql = replace(sql, 'state IN (''waiting'',''met'',''broken'')', '(state = ''waiting'' OR state = ''met'' OR state = ''broken'')')
 WHERE type = 'table' AND name = 'operation_dependencies';
PRAGMA writable_schema = OFF;
