-- What a Supabase project has and Clerk's Supabase guide relies on, then two
-- tables protected by row-level security the way Clerk and Supabase document
-- it for Clerk session tokens (Third-Party Auth: Clerk issues the tokens,
-- nobody shares a secret).
--
-- Load it as a superuser into a plain Postgres (13 or later):
--   psql -v ON_ERROR_STOP=1 -d DB -f examples/supabase/schema.sql
-- or paste part 2 into a Supabase project's SQL editor (part 1 is skipped
-- there anyway: the roles and the auth schema exist). It can be run again.

-- === Part 1: the Supabase roles and auth functions (plain Postgres only) ===
--
-- anon, authenticated and service_role are the roles PostgREST switches to
-- (`SET LOCAL ROLE` to the token's `role` claim; `anon` when the claim is
-- missing). service_role has BYPASSRLS: a token that names it sees every row.
-- authenticator is the login role PostgREST connects as; it holds no rights
-- of its own (NOINHERIT) and may only switch to the three.
do $part1$
begin
  if not exists (select from pg_roles where rolname = 'anon') then
    create role anon nologin noinherit;
  end if;
  if not exists (select from pg_roles where rolname = 'authenticated') then
    create role authenticated nologin noinherit;
  end if;
  if not exists (select from pg_roles where rolname = 'service_role') then
    create role service_role nologin noinherit bypassrls;
  end if;
  if not exists (select from pg_roles where rolname = 'authenticator') then
    create role authenticator login noinherit;
    grant anon, authenticated, service_role to authenticator;
  end if;

  if to_regnamespace('auth') is null then
    create schema auth;
    grant usage on schema auth to anon, authenticated, service_role;

    -- As supabase/auth defines it (migration 20220531120530_add_auth_jwt_function):
    -- the claims PostgREST put into request.jwt.claims for this transaction.
    create function auth.jwt() returns jsonb language sql stable as $fn$
      select coalesce(
        nullif(current_setting('request.jwt.claim', true), ''),
        nullif(current_setting('request.jwt.claims', true), '')
      )::jsonb
    $fn$;

    -- As supabase/auth defines it (migration 20220224000811_update_auth_functions),
    -- deprecated there in favour of auth.jwt()->>'sub'. The ::uuid cast fails
    -- on Clerk user ids ("user_..."): never use it with Clerk.
    create function auth.uid() returns uuid language sql stable as $fn$
      select coalesce(
        nullif(current_setting('request.jwt.claim.sub', true), ''),
        (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'sub')
      )::uuid
    $fn$;
    comment on function auth.uid() is 'Deprecated. Use auth.jwt() -> ''sub'' instead.';

    -- What Supabase grants on new tables in public: every API role gets the
    -- table privileges, so row-level security is what keeps rows apart.
    alter default privileges in schema public grant all on tables to anon, authenticated, service_role;
    alter default privileges in schema public grant all on sequences to anon, authenticated, service_role;
    grant usage on schema public to anon, authenticated, service_role;
  end if;
end
$part1$;

-- === Part 2: the application's tables (plain Postgres and Supabase alike) ===

-- Owned per user: the Clerk user id (sub, "user_...") is text, not a uuid.
create table if not exists public.notes (
  id bigint generated always as identity primary key,
  user_id text not null default (auth.jwt()->>'sub'),
  body text not null,
  created_at timestamptz not null default now()
);
alter table public.notes enable row level security;

-- `(select auth.jwt()->>'sub')` is evaluated once per statement, not per row;
-- `to authenticated` keeps the policies off anon and every other role.
drop policy if exists "Users read their own notes" on public.notes;
create policy "Users read their own notes" on public.notes
  for select to authenticated
  using ((select auth.jwt()->>'sub') = user_id);

drop policy if exists "Users add their own notes" on public.notes;
create policy "Users add their own notes" on public.notes
  for insert to authenticated
  with check ((select auth.jwt()->>'sub') = user_id);

drop policy if exists "Users change their own notes" on public.notes;
create policy "Users change their own notes" on public.notes
  for update to authenticated
  using ((select auth.jwt()->>'sub') = user_id)
  with check ((select auth.jwt()->>'sub') = user_id);

drop policy if exists "Users delete their own notes" on public.notes;
create policy "Users delete their own notes" on public.notes
  for delete to authenticated
  using ((select auth.jwt()->>'sub') = user_id);

-- Owned per organization. The active organization is `org_id` in session
-- tokens v1 and `o.id` in v2; the role is `org_role` = 'org:admin' (v1) or
-- `o.rol` = 'admin' (v2, without the "org:" prefix). Policies read both.
create table if not exists public.org_notes (
  id bigint generated always as identity primary key,
  organization_id text not null default (coalesce(auth.jwt()->>'org_id', auth.jwt()->'o'->>'id')),
  author_id text not null default (auth.jwt()->>'sub'),
  body text not null,
  created_at timestamptz not null default now()
);
alter table public.org_notes enable row level security;

drop policy if exists "Members read their organization's notes" on public.org_notes;
create policy "Members read their organization's notes" on public.org_notes
  for select to authenticated
  using (organization_id = (select coalesce(auth.jwt()->>'org_id', auth.jwt()->'o'->>'id')));

drop policy if exists "Only organization admins add notes" on public.org_notes;
create policy "Only organization admins add notes" on public.org_notes
  for insert to authenticated
  with check (
    ((select auth.jwt()->>'org_role') = 'org:admin' or (select auth.jwt()->'o'->>'rol') = 'admin')
    and organization_id = (select coalesce(auth.jwt()->>'org_id', auth.jwt()->'o'->>'id'))
    and author_id = (select auth.jwt()->>'sub')
  );
