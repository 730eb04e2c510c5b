#!/usr/bin/env bash
# The README's REST examples, runnable against a cluster started with `yr start --master`
# (YR_SESSION names its session folder; default: this user's newest session, `yr session`).
# `make demo` runs this file against its cluster; each command is printed before it runs.
set -euo pipefail
S=${YR_SESSION:-$(yr session)}
field() { sed -n "s/.*\"$1\": \"\(.*\)\".*/\1/p" "$S/session.json"; }
META=$(field meta_url) FRONTEND=$(field frontend_url)
AUTH="Authorization: Bearer $(cat "$(field token_file)")"
HELLO=${HELLO:-$PWD/target/release/hello}
trap 'case $BASH_COMMAND in curl*|ID=*) echo "\$ $BASH_COMMAND";; esac' DEBUG

# Register a function (openYuanrong's body), then call it by URN and by the short form.
curl -sS -H "$AUTH" $META/serverless/v1/functions -d '{"name":"0@svc@hello","runtime":"posix-custom-runtime","handler":"hello","cpu":100,"memory":64,"concurrentNum":"4","codePath":"'$HELLO'"}'; echo
curl -sS -H "$AUTH" $FRONTEND/serverless/v1/functions/sn:cn:yrk:default:function:0@svc@hello:latest/invocations -d yuanrong; echo
curl -sS -H "$AUTH" $FRONTEND/invocations/default/svc/0@svc@hello/ -d short; echo

# Asynchronously: 202 at once, the result later.
ID=$(curl -sS -H "$AUTH" -H 'X-Invoke-Type: async' $FRONTEND/invocations/default/svc/0@svc@hello/ -d later | sed 's/.*"requestId":"\([^"]*\)".*/\1/')
curl -sS -H "$AUTH" --retry 5 --retry-all-errors $FRONTEND/serverless/v1/functions/async-results/$ID; echo

# AWS Lambda's and OpenFaaS's conventions.
curl -sS -H "$AUTH" $FRONTEND/2015-03-31/functions/0@svc@hello/invocations -d lambda; echo
curl -sS -H "$AUTH" -o /dev/null -w '%{http_code}\n' -H 'X-Amz-Invocation-Type: Event' $FRONTEND/2015-03-31/functions/0@svc@hello/invocations -d event
curl -sS -H "$AUTH" $FRONTEND/function/0@svc@hello -d openfaas; echo
curl -sS -H "$AUTH" -D - -o /dev/null $FRONTEND/async-function/0@svc@hello -d later | grep -i -E '^(HTTP|x-call-id)'

# Errors are application/problem+json: an unknown function, and a call without the token.
curl -sS -H "$AUTH" $FRONTEND/function/0@svc@nope -d x; echo
curl -sS $FRONTEND/function/0@svc@hello -d x; echo
