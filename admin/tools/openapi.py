#!/usr/bin/env python3
"""Writes admin/src/openapi.json (the admin API's OpenAPI 3 document). Edit here, run, commit both."""
import json, os

def ref(name): return {"$ref": f"#/components/schemas/{name}"}
def problem(desc): return {"description": desc, "content": {"application/problem+json": {"schema": ref("Problem")}}}
def ok_json(desc, schema): return {"description": desc, "content": {"application/json": {"schema": schema}}}

P = {
    "400": problem("Bad input: the detail says what is wrong"),
    "401": problem("No token, or not the admin token"),
    "404": problem("No such app, build or release"),
    "408": problem("The body did not arrive in time"),
    "409": problem("A conflict: a domain another app has, or a change the app's state or origin does not allow"),
    "413": problem("The body is larger than allowed"),
    "415": problem("A Content-Type this endpoint does not take"),
    "422": problem("The body is well-formed but not valid: every error, located"),
    "429": problem("Too many log streams are open"),
    "503": problem("The supervisor or the state store is busy or going away; try again"),
}
def errs(*codes): return {c: P[c] for c in codes}

APP = {"name": "app", "in": "path", "required": True, "description": "An app name",
       "schema": {"type": "string", "pattern": "^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"}}
BUILD = {"name": "id", "in": "path", "required": True, "description": "A build id",
         "schema": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,128}$"}}
FOLLOW = {"name": "follow", "in": "query", "required": False,
          "description": "1 or true: keep the stream open and send new lines as they come",
          "schema": {"type": "string", "enum": ["0", "1", "true", "false"]}}
LINES = {"name": "lines", "in": "query", "required": False,
         "description": "How many of the last lines to send first (default 100)",
         "schema": {"type": "integer", "minimum": 0, "maximum": 10000}}
SSE = {"description": "Server-Sent Events: one `data:` event per line, then an `end` event",
       "content": {"text/event-stream": {"schema": {
           "type": "object", "required": ["data"],
           "description": "One event: `data` is a log line; the last event is named `end` (for a build, its data is the Build as JSON)",
           "properties": {"event": {"type": "string", "enum": ["end"]}, "data": {"type": "string"}, "id": {"type": "string"}}}}}}

nullable_int = {"type": ["integer", "null"]}
schemas = {
    "Problem": {"type": "object", "required": ["type", "title", "status", "detail"], "properties": {
        "type": {"type": "string"}, "title": {"type": "string"}, "status": {"type": "integer"},
        "detail": {"type": "string"},
        "errors": {"type": "array", "items": {"type": "object", "required": ["line", "column", "key", "message"], "properties": {
            "line": {"type": "integer"}, "column": {"type": "integer"}, "key": {"type": "string"}, "message": {"type": "string"},
            "file": {"type": "string", "description": "The config file (a reload)"},
            "text": {"type": "string", "description": "As `spinforge check` prints it: file:line:column: key: message, the line quoted"}}}}}},
    "App": {"type": "object", "required": ["name", "origin", "domains", "source", "external", "framework", "instances", "env", "releases"],
            "properties": {
        "name": {"type": "string"}, "origin": {"type": "string", "enum": ["config", "api", "deploy_dir"]},
        "domains": {"type": "array", "items": {"type": "string"}}, "source": {"type": "string"},
        "external": {"type": "boolean"}, "framework": {"type": "string"}, "instances": {"type": "integer"},
        "memory": nullable_int, "cpu": {"type": ["number", "null"]}, "idle_timeout_s": nullable_int,
        "env": {"type": "array", "items": {"type": "string"}, "description": "Variable names only: values never leave"},
        "current_release": nullable_int, "releases": {"type": "array", "items": {"type": "integer"}}}},
    "AppSpec": {"type": "object", "description": "An app section, as under `apps.<name>` in the YAML (see docs/config.md). Unknown keys are errors.",
                "additionalProperties": False, "properties": {
        "domains": {"type": "array", "items": {"type": "string"}},
        "source": {"type": "string"}, "upstream": {"type": "string"},
        "framework": {"type": "string", "enum": ["auto", "express", "next", "remix", "static", "node"]},
        "env": {"type": "object", "additionalProperties": {"type": "string"}},
        "instances": {"type": "integer", "minimum": 1, "maximum": 64},
        "memory": {"type": "string"}, "cpu": {"type": "number"}, "idle_timeout": {"type": "string"},
        "health_check": {"type": "object"}, "rate_limit": {"type": "object"},
        "tls": {}, "spa": {"type": "boolean"}}},
    "DeploySource": {"type": "object", "required": ["source"], "additionalProperties": False,
                     "properties": {"source": {"type": "string", "description": "A git URL, with an optional #ref"}}},
    "BuildRef": {"type": "object", "required": ["build"], "properties": {"build": {"type": "string"}}},
    "Build": {"type": "object", "required": ["id", "app", "state", "queued_ms"], "properties": {
        "id": {"type": "string"}, "app": {"type": "string"},
        "state": {"type": "string", "enum": ["queued", "running", "succeeded", "failed", "cancelled"]},
        "queued_ms": {"type": "integer"}, "started_ms": nullable_int, "finished_ms": nullable_int,
        "release": nullable_int, "error": {"type": ["string", "null"]},
        "steps": {"type": "array", "description": "How long each step took, in order (source, install, compile, prune, release); empty until the build ends",
                  "items": {"type": "object", "required": ["name", "ms"], "properties": {"name": {"type": "string"}, "ms": {"type": "integer"}}}}}},
    "Release": {"type": "object", "required": ["release", "current"], "properties": {
        "release": {"type": "integer"}, "current": {"type": "boolean"}, "framework": {"type": ["string", "null"]},
        "source": {"type": ["string", "null"]}, "source_commit": {"type": ["string", "null"]},
        "build_id": {"type": ["string", "null"]}, "created_ms": nullable_int}},
    "Rollback": {"type": "object", "additionalProperties": False, "properties": {"release": {"type": "integer", "minimum": 0}}},
    "RolledBack": {"type": "object", "required": ["app", "release"], "properties": {"app": {"type": "string"}, "release": {"type": "integer"}}},
    "Action": {"type": "object", "required": ["app", "action"], "properties": {"app": {"type": "string"}, "action": {"type": "string", "enum": ["start", "stop", "restart"]}}},
    "Route": {"type": "object", "required": ["domain", "app", "external"], "properties": {
        "domain": {"type": "string"}, "app": {"type": "string"}, "release": nullable_int, "external": {"type": "boolean"}}},
    "Spinlet": {"type": "object", "required": ["id", "app", "release", "state", "pid", "host", "port", "started_ms", "restarts"], "properties": {
        "id": {"type": "string"}, "app": {"type": "string"}, "release": {"type": "integer"},
        "state": {"type": "string", "enum": ["starting", "running", "stopping", "stopped", "crashed", "failed"]},
        "pid": {"type": "integer"}, "host": {"type": "string"}, "port": {"type": "integer"},
        "started_ms": {"type": "integer"}, "restarts": {"type": "integer"}}},
    "ReloadReport": {"type": "object", "required": ["file", "outcome", "applied", "restart", "warnings", "errors", "took_ms"], "properties": {
        "file": {"type": "string", "description": "The config file read"},
        "outcome": {"type": "string", "enum": ["applied", "unchanged", "refused"]},
        "applied": {"type": "array", "items": {"type": "string"}, "description": "Keys applied by this reload (edge.h2c, apps.shop)"},
        "restart": {"type": "array", "description": "Keys whose new value only a new process can apply, with why",
                    "items": {"type": "object", "required": ["key", "why"], "properties": {"key": {"type": "string"}, "why": {"type": "string"}}}},
        "warnings": {"type": "array", "items": {"type": "string"}, "description": "What was applied only in part, with why"},
        "errors": {"type": "array", "items": {"type": "object"}, "description": "Empty: a refused file answers 422"},
        "took_ms": {"type": "number"}}},
    "Cert": {"type": "object", "required": ["domain", "not_after", "expires_in_days", "issued_ms"], "properties": {
        "domain": {"type": "string"}, "not_after": {"type": "integer", "description": "Seconds since the epoch"},
        "expires_in_days": {"type": "integer"}, "issued_ms": {"type": "integer"}}},
}

def arr(name): return {"type": "array", "items": ref(name)}
public = {"security": []}
paths = {
    "/healthz": {"get": {**public, "operationId": "healthz", "summary": "Liveness", "responses": {
        "200": {"description": "Serving", "content": {"text/plain": {"schema": {"type": "string"}}}}}}},
    "/metrics": {"get": {**public, "operationId": "metrics", "summary": "Request counters (Prometheus)", "responses": {
        "200": {"description": "OpenMetrics text format (Prometheus reads it)", "content": {"application/openmetrics-text": {"schema": {"type": "string"}}}}}}},
    "/api/v1/openapi.json": {"get": {**public, "operationId": "openapi", "summary": "This document", "responses": {
        "200": ok_json("OpenAPI 3", {"type": "object"})}}},
    "/api/v1/apps": {"get": {"operationId": "listApps", "summary": "Every app", "responses": {
        "200": ok_json("Apps by name", arr("App")), **errs("401", "503")}}},
    "/api/v1/apps/{app}": {
        "parameters": [APP],
        "get": {"operationId": "getApp", "summary": "One app", "responses": {
            "200": ok_json("The app", ref("App")), **errs("400", "401", "404", "503")}},
        "put": {"operationId": "putApp", "summary": "Create or replace an API app",
                "requestBody": {"required": True, "content": {"application/json": {"schema": ref("AppSpec")}}},
                "responses": {"200": ok_json("Replaced", ref("App")), "201": ok_json("Created", ref("App")),
                              **errs("400", "401", "408", "409", "413", "415", "422", "503")}},
        "delete": {"operationId": "deleteApp", "summary": "Stop and forget an API app", "responses": {
            "204": {"description": "Deleted"}, **errs("400", "401", "404", "409", "503")}}},
    "/api/v1/apps/{app}/deploy": {"parameters": [APP], "post": {
        "operationId": "deploy", "summary": "Build and deploy a .tar.gz upload or a git source",
        "requestBody": {"required": True, "content": {
            "application/gzip": {"schema": {"type": "string", "format": "binary"}},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
            "application/json": {"schema": ref("DeploySource")}}},
        "responses": {"202": ok_json("The build started", ref("BuildRef")),
                      **errs("400", "401", "404", "408", "409", "413", "415", "422", "503")}}},
    "/api/v1/apps/{app}/logs": {"parameters": [APP], "get": {
        "operationId": "appLogs", "summary": "The app's log: the last lines, then (follow=1) new ones",
        "parameters": [FOLLOW, LINES],
        "responses": {"200": SSE, **errs("400", "401", "404", "429", "503")}}},
    "/api/v1/apps/{app}/releases": {"parameters": [APP], "get": {
        "operationId": "releases", "summary": "Kept releases, newest first",
        "responses": {"200": ok_json("Releases", arr("Release")), **errs("400", "401", "404", "503")}}},
    "/api/v1/apps/{app}/rollback": {"parameters": [APP], "post": {
        "operationId": "rollback", "summary": "Serve a kept release again (default: the one before the current)",
        "requestBody": {"required": False, "content": {"application/json": {"schema": ref("Rollback")}}},
        "responses": {"200": ok_json("Now serving", ref("RolledBack")),
                      **errs("400", "401", "404", "408", "409", "413", "415", "503")}}},
    "/api/v1/builds/{id}": {"parameters": [BUILD], "get": {
        "operationId": "build", "summary": "A build's state",
        "responses": {"200": ok_json("The build", ref("Build")), **errs("400", "401", "404", "503")}}},
    "/api/v1/builds/{id}/log": {"parameters": [BUILD], "get": {
        "operationId": "buildLog", "summary": "A build's log; follow=1 streams it until the build ends",
        "parameters": [FOLLOW],
        "responses": {"200": SSE, **errs("400", "401", "404", "429", "503")}}},
    "/api/v1/routes": {"get": {"operationId": "routes", "summary": "Domain → app",
        "responses": {"200": ok_json("Routes by domain", arr("Route")), **errs("401", "503")}}},
    "/api/v1/spinlets": {"get": {"operationId": "spinlets", "summary": "Running instances",
        "responses": {"200": ok_json("Spinlets", arr("Spinlet")), **errs("401", "503")}}},
    "/api/v1/reload": {"post": {"operationId": "reload",
        "summary": "Reload the config file, as SIGHUP does: every section is applied, or the file is refused whole (422, every error located) and the running config goes on",
        "responses": {"200": ok_json("Reloaded: what was applied, what needs a restart", ref("ReloadReport")),
                      **errs("401", "422", "503")}}},
    "/api/v1/certs": {"get": {"operationId": "certs", "summary": "Certificates and when they expire (never keys)",
        "responses": {"200": ok_json("Certificates by domain", arr("Cert")), **errs("401", "503")}}},
}
for action, summary in [("start", "Start the app's spinlets now"), ("stop", "Stop the app's spinlets"),
                        ("restart", "Replace the app's spinlets without downtime")]:
    paths[f"/api/v1/apps/{{app}}/{action}"] = {"parameters": [APP], "post": {
        "operationId": action, "summary": summary,
        "responses": {"200": ok_json("Done", ref("Action")), **errs("400", "401", "404", "409", "503")}}}

doc = {
    "openapi": "3.1.0",
    "info": {"title": "SpinForge admin API", "version": "1",
             "description": "Manage a SpinForge supervisor: apps, deploys, builds, logs, releases. Errors are application/problem+json."},
    "servers": [{"url": "/"}],
    "security": [{"bearer": []}],
    "paths": paths,
    "components": {"schemas": schemas,
                   "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
}
out = os.path.join(os.path.dirname(__file__), "..", "src", "openapi.json")
with open(out, "w") as f:
    json.dump(doc, f, indent=1)
    f.write("\n")
