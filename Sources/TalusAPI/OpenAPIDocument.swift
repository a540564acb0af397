// The OpenAPI document served at /openapi.yaml, written by hand. TalusAPITests keep it true:
// every registered route is documented and every documented operation is registered, the document
// validates, and a schemathesis run against the live server finds no response violating it.

/// The API's OpenAPI 3.0 description.
public enum OpenAPIDocument {
    public static let yaml = #"""
openapi: 3.0.3
info:
  title: Talus REST API
  version: "1"
  description: |
    Talus runs tools (mostly fuzzers) in throw-away VMs on a fleet of hypervisor hosts.
    Every endpoint except /healthz needs `Authorization: Bearer talus_…`.
    Roles: `admin` > `user` > `slave`. Slave tokens may only download image files and tool bundles.
    Users read every shared resource and change only what they own; uploads and tokens are private.
    Users write only requests into statuses (images: configure, delete; jobs: cancel; slaves: drain);
    every other state is set by the master.
    Lists are paginated newest first: `limit` (1…500, default 50) and `after` (the previous page's `next`).
    Filters are equality on the listed query parameters only; anything else is a 422.
    Errors are `application/problem+json` (RFC 9457), with `errors` listing field problems on 422.
servers:
  - url: /
security:
  - bearer: []
tags:
  - name: ops
  - name: os
  - name: images
  - name: uploads
  - name: code
  - name: tasks
  - name: jobs
  - name: results
  - name: crashes
  - name: files
  - name: filesets
  - name: slaves
  - name: users
  - name: tokens
paths:
  /healthz:
    get:
      tags: [ops]
      operationId: health
      summary: Health of the API and its database (no token needed).
      security: []
      responses:
        "200":
          description: Healthy.
          content:
            application/json:
              schema: {$ref: "#/components/schemas/Health"}
        "503":
          description: A dependency is unavailable.
          content:
            application/json:
              schema: {$ref: "#/components/schemas/Health"}
  /metrics:
    get:
      tags: [ops]
      operationId: metrics
      summary: Prometheus metrics (admin token unless http.metrics_public).
      responses:
        "200":
          description: Prometheus text format.
          content:
            text/plain:
              schema: {type: string}
        "401": {$ref: "#/components/responses/Unauthorized"}
        "403": {$ref: "#/components/responses/Forbidden"}
  /openapi.yaml:
    get:
      tags: [ops]
      operationId: openapi
      summary: This document.
      responses:
        "200":
          description: The OpenAPI document.
          content:
            application/yaml:
              schema: {type: object}
        "401": {$ref: "#/components/responses/Unauthorized"}
        "403": {$ref: "#/components/responses/Forbidden"}

  /api/v1/os:
    post:
      tags: [os]
      operationId: createOS
      summary: Create an operating system (admin).
      requestBody:
        required: true
        content:
          application/json:
            schema: {$ref: "#/components/schemas/OSCreate"}
      responses:
        "201":
          description: Created.
          headers: {Location: {$ref: "#/components/headers/Location"}}
          content:
            application/json:
              schema: {$ref: "#/components/schemas/OS"}
        "400": {$ref: "#/components/responses/BadRequest"}
        "401": {$ref: "#/components/responses/Unauthorized"}
        "403": {$ref: "#/components/responses/Forbidden"}
        "409": {$ref: "#/components/responses/Conflict"}
        "413": {$ref: "#/components/responses/TooLarge"}
        "415": {$ref: "#/components/responses/UnsupportedMediaType"}
        "422": {$ref: "#/components/responses/Invalid"}
    get:
      tags: [os]
      operationId: listOS
      summary: List operating systems.
      parameters:
        - {$ref: "#/components/parameters/Limit"}
        - {$ref: "#/components/parameters/After"}
        - {$ref: "#/components/parameters/NameFilter"}
        - {name: family, in: query, schema: {type: string, enum: [linux, windows, other]}}
        - {name: arch, in: query, schema: {$ref: "#/components/schemas/FilterString"}}
        - {name: version, in: query, schema: {$ref: "#/components/schemas/FilterString"}}
        - {$ref: "#/components/parameters/TagFilter"}
      responses:
        "200":
          description: A page.
          content:
            application/json:
              schema:
                allOf:
                  - {$ref: "#/components/schemas/Page"}
                  - properties:
                      items: {type: array, items: {$ref: "#/components/schemas/OS"}}
        "401": {$ref: "#/components/responses/Unauthorized"}
        "403": {$ref: "#/components/responses/Forbidden"}
        "422": {$ref: "#/components/responses/Invalid"}
  /api/v1/os/{id}:
    parameters:
      - {$ref: "#/components/parameters/Id"}
    get:
      tags: [os]
      operationId: getOS
      summary: One operating system.
      responses:
        "200":
          description: The os.
          content:
            application/json:
              schema: {$ref: "#/components/schemas/OS"}
        "401": {$ref: "#/components/responses/Unauthorized"}
        "403": {$ref: "#/components/responses/Forbidden"}
        "404": {$ref: "#/components/responses/NotFound"}
    patch:
      tags: [os]
      operationId: updateOS
      summary: Change an operating system (admin).
      requestBody:
        required: true
        content:
          application/json:
            schema: {$ref: "#/components/schemas/OSUpdate"}
      responses:
        "200":
          description: The updated os.
          content:
            application/json:
              schema: {$ref: "#/components/schemas/OS"}
        "400": {$ref: "#/components/responses/BadRequest"}
        "401": {$ref: "#/components/responses/Unauthorized"}
        "403": {$ref: "#/components/responses/Forbidden"}
        "404": {$ref: "#/components/responses/NotFound"}
        "413": {$ref: "#/components/responses/TooLarge"}
        "415": {$ref: "#/components/responses/UnsupportedMediaType"}
        "422": {$ref: "#/components/responses/Invalid"}
    delete:
      tags: [os]
      operationId: deleteOS
      summary: Delete an operating system no image uses (admin).
      responses:
        "204": {description: Deleted.}
        "401": {$ref: "#/components/responses/Unauthorized"}
        "403": {$ref: "#/components/responses/Forbidden"}
        "404": {$ref: "#/components/responses/NotFound"}
        "409": {$ref: "#/components/responses/Conflict"}

  /api/v1/images:
    post:
      tags: [images]
      operationId: createImage
      summary: Import an upload (status import) or derive from a ready base image (status create).
      description: Give exactly one of `upload` (with `os`) or `base`. The master does the rest and sets the status.
      requestBody:
        required: true
        content:
          application/json:
            schema: {$ref: "#/components/schemas/ImageCreate"}
      responses:
        "201":
          description: The image, in status import or create.
          headers: {Location: {$ref: "#/components/headers/Location"}}
          content:
            application/json:
              schema: {$ref: "#/components/schemas/Image"}
        "400": {$ref: "#/components/responses/BadRequest"}
        "401": {$ref: "#/components/responses/Unauthorized"}
        "403": {$ref: "#/components/responses/Forbidden"}
        "409": {$ref: "#/components/responses/Conflict"}
        "413": {$ref: "#/components/responses/TooLarge"}
        "415": {$ref: "#/components/responses/UnsupportedMediaType"}
        "422": {$ref: "#/components/responses/Invalid"}
    get:
      tags: [images]
      operationId: listImages
      summary: List images.
      parameters:
        - {$ref: "#/components/parameters/Limit"}
        - {$ref: "#/components/parameters/After"}
        - {$ref: "#/components/parameters/NameFilter"}
        - {name: os, in: query, schema: {$ref: "#/components/schemas/ObjectId"}}
        - {name: base, in: query, schema: {$ref: "#/components/schemas/ObjectId"}}
        - {name: status, in: query, schema: {$ref: "#/components/schemas/ImageState"}}
        - {$ref: "#/components/parameters/OwnerFilter"}
        - {$ref: "#/components/parameters/TagFilter"}
      responses:
        "200":
          description: A page.
          content:
            application/json:
              schema:
                allOf:
                  - {$ref: "#/components/schemas/Page"}
                  - properties:
                      items: {type: array, items: {$ref: "#/components/schemas/Image"}}
        "401": {$ref: "#/components/responses/Unauthorized"}
        "403": {$ref: "#/components/responses/Forbidden"}
        "422": {$ref: "#/components/responses/Invalid"}
  /api/v1/images/{id}:
    parameters:
      - {$ref: "#/components/parameters/Id"}
    get:
      tags: [images]
      operationId: getImage
      summary: One image (VNC password shown to its owner and admins only).
      responses:
        "200":
          description: The image.
          content:
            application/json:
              schema: {$ref: "#/components/schemas/Image"}
        "401": {$ref: "#/components/responses/Unauthorized"}
        "403": {$ref: "#/components/responses/Forbidden"}
        "404": {$ref: "#/components/responses/NotFound"}
    patch:
      tags: [images]
      operationId: updateImage
      summary: Change an image's details or request configure/delete (owner or admin).
      requestBody:
        required: true
        content:
          application/json:
            schema: {$ref: "#/components/schemas/ImageUpdate"}
      responses:
        "200":
          description: The updated image.
          content:
            application/json:
              schema: {$ref: "#/components/schemas/Image"}
        "400": {$ref: "#/components/responses/BadRequest"}
        "401": {$ref: "#/components/responses/Unauthorized"}
        "403": {$ref: "#/components/responses/Forbidden"}
        "404": {$ref: "#/components/responses/NotFound"}
        "409": {$ref: "#/components/responses/Conflict"}
        "413": {$ref: "#/components/responses/TooLarge"}
        "415": {$ref: "#/components/responses/UnsupportedMediaType"}
        "422": {$ref: "#/components/responses/Invalid"}
    delete:
      tags: [images]
      operationId: deleteImage
      summary: Request the deletion of an image (owner or admin); the master removes it.
      responses:
        "202":
          description: Delete requested (or already under way).
          content:
            application/json:
              schema: {$ref: "#/components/schemas/Image"}
        "401": {$ref: "#/components/responses/Unauthorized"}
        "403": {$ref: "#/components/responses/Forbidden"}
        "404": {$ref: "#/components/responses/NotFound"}
        "409": {$ref: "#/components/responses/Conflict"}
  /api/v1/images/{id}/file:
    parameters:
      - {$ref: "#/components/parameters/Id"}
    get:
      tags: [images]
      operationId: getImageFile
      summary: The image's qcow2 file (slave, user or admin tokens), with single-range requests.
      parameters:
        - {name: Range, in: header, schema: {type: string, pattern: "^bytes=[0-9]*-[0-9]*$"}}
        - {name: If-Range, in: header, schema: {type: string}}
        - {name: If-None-Match, in: header, schema: {type: string}}
      responses:
        "200":
          description: The whole file.
          headers: {Content-Length: {$ref: "#/components/headers/ContentLength"}, ETag: {$ref: "#/components/headers/ETag"}, X-Talus-SHA256: {$ref: "#/components/headers/Sha256"}, Accept-Ranges: {$ref: "#/components/headers/AcceptRanges"}}
          content:
            application/octet-stream:
              schema: {type: string, format: binary}
        "206":
          description: The requested range.
          headers: {Content-Length: {$ref: "#/components/headers/ContentLength"}, Content-Range: {$ref: "#/components/headers/ContentRange"}, ETag: {$ref: "#/components/headers/ETag"}, X-Talus-SHA256: {$ref: "#/components/headers/Sha256"}}
          content:
            application/octet-stream:
              schema: {type: string, format: binary}
        "304": {description: Not modified (If-None-Match matched the ETag).}
        "401": {$ref: "#/components/responses/Unauthorized"}
        "404": {$ref: "#/components/responses/NotFound"}
        "409": {$ref: "#/components/responses/Conflict"}
        "416": {$ref: "#/components/responses/RangeNotSatisfiable"}
    head:
      tags: [images]
      operationId: headImageFile
      summary: Size, ETag and sha256 of the image file.
      parameters:
        - {name: Range, in: header, schema: {type: string, pattern: "^bytes=[0-9]*-[0-9]*$"}}
      responses:
        "200":
          description: Headers of the whole file.
          headers: {Content-Length: {$ref: "#/components/headers/ContentLength"}, ETag: {$ref: "#/components/headers/ETag"}, X-Talus-SHA256: {$ref: "#/components/headers/Sha256"}, Accept-Ranges: {$ref: "#/components/headers/AcceptRanges"}}
        "206":
          description: Headers of the range.
          headers: {Content-Length: {$ref: "#/components/headers/ContentLength"}, Content-Range: {$ref: "#/components/headers/ContentRange"}, ETag: {$ref: "#/components/headers/ETag"}, X-Talus-SHA256: {$ref: "#/components/headers/Sha256"}}
        "304": {description: Not modified.}
        "401": {$ref: "#/components/responses/Unauthorized"}
        "404": {$ref: "#/components/responses/NotFound"}
        "409": {$ref: "#/components/responses/Conflict"}
        "416": {$ref: "#/components/responses/RangeNotSatisfiable"}

  /api/v1/uploads:
    post:
      tags: [uploads]
      operationId: createUpload
      summary: Announce a file to upload (then PUT its content).
      requestBody:
        required: true
        content:
          application/json:
            schema: {$ref: "#/components/schemas/UploadCreate"}
      responses:
        "201":
          description: The upload, waiting for its content.
          headers: {Location: {$ref: "#/components/headers/Location"}}
          content:
            application/json:
              schema: {$ref: "#/components/schemas/Upload"}
        "400": {$ref: "#/components/responses/BadRequest"}
        "401": {$ref: "#/components/responses/Unauthorized"}
        "403": {$ref: "#/components/responses/Forbidden"}
        "413": {$ref: "#/components/responses/TooLarge"}
        "415": {$ref: "#/components/responses/UnsupportedMediaType"}
        "422": {$ref: "#/components/responses/Invalid"}
    get:
      tags: [uploads]
      operationId: listUploads
      summary: Your uploads (admins see all).
      parameters:
        - {$ref: "#/components/parameters/Limit"}
        - {$ref: "#/components/parameters/After"}
        - {name: complete, in: query, schema: {type: string, enum: ["true", "false"]}}
        - {name: filename, in: query, schema: {$ref: "#/components/schemas/FilterString"}}
        - {$ref: "#/components/parameters/OwnerFilter"}
        - {$ref: "#/components/parameters/TagFilter"}
      responses:
        "200":
          description: A page.
          content:
            application/json:
              schema:
                allOf:
                  - {$ref: "#/components/schemas/Page"}
                  - properties:
                      items: {type: array, items: {$ref: "#/components/schemas/Upload"}}
        "401": {$ref: "#/components/responses/Unauthorized"}
        "403": {$ref: "#/components/responses/Forbidden"}
        "422": {$ref: "#/components/responses/Invalid"}
  /api/v1/uploads/{id}:
    parameters:
      - {$ref: "#/components/parameters/Id"}
    get:
      tags: [uploads]
      operationId: getUpload
      summary: One of your uploads (size = bytes received so far).
      responses:
        "200":
          description: The upload.
          content:
            application/json:
              schema: {$ref: "#/components/schemas/Upload"}
        "401": {$ref: "#/components/responses/Unauthorized"}
        "403": {$ref: "#/components/responses/Forbidden"}
        "404": {$ref: "#/components/responses/NotFound"}
    delete:
      tags: [uploads]
      operationId: deleteUpload
      summary: Delete an upload and its file (not while an import uses it).
      responses:
        "204": {description: Deleted.}
        "401": {$ref: "#/components/responses/Unauthorized"}
        "403": {$ref: "#/components/responses/Forbidden"}
        "404": {$ref: "#/components/responses/NotFound"}
        "409": {$ref: "#/components/responses/Conflict"}
  /api/v1/uploads/{id}/content:
    parameters:
      - {$ref: "#/components/parameters/Id"}
    put:
      tags: [uploads]
      operationId: putUploadContent
      summary: Stream the upload's bytes (resumable with Content-Range).
      description: |
        Without Content-Range the content starts at byte 0. With `Content-Range: bytes START-END/TOTAL`,
        START must equal the bytes already received (409 otherwise) and TOTAL the announced size.
        200 when the upload is complete (size and sha256 recorded); 202 when bytes are still missing.
        A body beyond the announced size is a 413 and the partial file is removed.
      parameters:
        - {name: Content-Range, in: header, schema: {type: string, pattern: "^bytes [0-9]+-[0-9]+/[0-9]+$"}}
      requestBody:
        required: true
        content:
          application/octet-stream:
            schema: {type: string, format: binary}
      responses:
        "200":
          description: Complete.
          content:
            application/json:
              schema: {$ref: "#/components/schemas/Upload"}
        "202":
          description: Stored; more bytes expected (resume from `size`).
          content:
            application/json:
              schema: {$ref: "#/components/schemas/Upload"}
        "400": {$ref: "#/components/responses/BadRequest"}
        "401": {$ref: "#/components/responses/Unauthorized"}
        "403": {$ref: "#/components/responses/Forbidden"}
        "404": {$ref: "#/components/responses/NotFound"}
        "409": {$ref: "#/components/responses/Conflict"}
        "413": {$ref: "#/components/responses/TooLarge"}
        "422": {$ref: "#/components/responses/Invalid"}

  /api/v1/code:
    get:
      tags: [code]
      operationId: listCode
      summary: Tools and components recorded from the code repository.
      parameters:
        - {$ref: "#/components/parameters/Limit"}
        - {$ref: "#/components/parameters/After"}
        - {$ref: "#/components/parameters/NameFilter"}
        - {name: kind, in: query, schema: {type: string, enum: [tool, component]}}
        - {name: commit, in: query, schema: {$ref: "#/components/schemas/FilterString"}}
        - {$ref: "#/components/parameters/TagFilter"}
      responses:
        "200":
          description: A page.
          content:
            application/json:
              schema:
                allOf:
                  - {$ref: "#/components/schemas/Page"}
                  - properties:
                      items: {type: array, items: {$ref: "#/components/schemas/Code"}}
        "401": {$ref: "#/components/responses/Unauthorized"}
        "403": {$ref: "#/components/responses/Forbidden"}
        "422": {$ref: "#/components/responses/Invalid"}
  /api/v1/code/{name}:
    parameters:
      - {name: name, in: path, required: true, description: "A record id (24 hex digits), or a tool or component name: its newest record (at the recorded head of main, else its last recording).", schema: {type: string}}
    get:
      tags: [code]
      operationId: getCode
      summary: One recorded tool or component.
      responses:
        "200":
          description: The record.
          content:
            application/json:
              schema: {$ref: "#/components/schemas/Code"}
        "401": {$ref: "#/components/responses/Unauthorized"}
        "403": {$ref: "#/components/responses/Forbidden"}
        "404": {$ref: "#/components/responses/NotFound"}
  /api/v1/code/head:
    get:
      tags: [code]
      operationId: getCodeHead
      summary: The commit of the main branch recorded last, with its tools and components.
      responses:
        "200":
          description: The recorded head.
          content:
            application/json:
              schema: {$ref: "#/components/schemas/CodeHead"}
        "401": {$ref: "#/components/responses/Unauthorized"}
        "403": {$ref: "#/components/responses/Forbidden"}
        "404": {$ref: "#/components/responses/NotFound"}
  /api/v1/code/{name}/bundle:
    parameters:
      - {name: name, in: path, required: true, description: The tool's name., schema: {type: string}}
    get:
      tags: [code]
      operationId: getToolBundle
      summary: "The tool's bundle (tar.gz of tool/ and components/<name>/) at a recorded commit (slave, user or admin tokens)."
      parameters:
        - {name: commit, in: query, description: "A full commit id (40 lowercase hex digits). Default: the newest, the tool at the recorded head of main.", schema: {type: string}}
        - {name: If-None-Match, in: header, schema: {type: string}}
      responses:
        "200":
          description: The bundle; the same commit always gives the same bytes.
          headers: {Content-Length: {$ref: "#/components/headers/ContentLength"}, ETag: {$ref: "#/components/headers/ETag"}, X-Talus-SHA256: {$ref: "#/components/headers/Sha256"}, X-Talus-Commit: {description: The commit the bundle was built from., schema: {type: string}}}
          content:
            application/gzip:
              schema: {type: string, format: binary}
        "304": {description: Not modified (If-None-Match matched the ETag).}
        "400": {$ref: "#/components/responses/BadRequest"}
        "401": {$ref: "#/components/responses/Unauthorized"}
        "404": {$ref: "#/components/responses/NotFound"}
        "422": {$ref: "#/components/responses/Invalid"}

  /api/v1/tasks:
    post:
      tags: [tasks]
      operationId: createTask
      summary: Create a task; the tool commit is pinned (the newest recorded unless given).
      requestBody:
        required: true
        content:
          application/json:
            schema: {$ref: "#/components/schemas/TaskCreate"}
      responses:
        "201":
          description: Created.
          headers: {Location: {$ref: "#/components/headers/Location"}}
          content:
            application/json:
              schema: {$ref: "#/components/schemas/Task"}
        "400": {$ref: "#/components/responses/BadRequest"}
        "401": {$ref: "#/components/responses/Unauthorized"}
        "403": {$ref: "#/components/responses/Forbidden"}
        "409": {$ref: "#/components/responses/Conflict"}
        "413": {$ref: "#/components/responses/TooLarge"}
        "415": {$ref: "#/components/responses/UnsupportedMediaType"}
        "422": {$ref: "#/components/responses/Invalid"}
    get:
      tags: [tasks]
      operationId: listTasks
      summary: List tasks.
      parameters:
        - {$ref: "#/components/parameters/Limit"}
        - {$ref: "#/components/parameters/After"}
        - {$ref: "#/components/parameters/NameFilter"}
        - {name: tool, in: query, schema: {$ref: "#/components/schemas/FilterString"}}
        - {name: image, in: query, schema: {$ref: "#/components/schemas/ObjectId"}}
        - {$ref: "#/components/parameters/OwnerFilter"}
        - {$ref: "#/components/parameters/TagFilter"}
      responses:
        "200":
          description: A page.
          content:
            application/json:
              schema:
                allOf:
                  - {$ref: "#/components/schemas/Page"}
                  - properties:
                      items: {type: array, items: {$ref: "#/components/schemas/Task"}}
        "401": {$ref: "#/components/responses/Unauthorized"}
        "403": {$ref: "#/components/responses/Forbidden"}
        "422": {$ref: "#/components/responses/Invalid"}
  /api/v1/tasks/{id}:
    parameters:
      - {$ref: "#/components/parameters/Id"}
    get:
      tags: [tasks]
      operationId: getTask
      summary: One task.
      responses:
        "200":
          description: The task.
          content:
            application/json:
              schema: {$ref: "#/components/schemas/Task"}
        "401": {$ref: "#/components/responses/Unauthorized"}
        "403": {$ref: "#/components/responses/Forbidden"}
        "404": {$ref: "#/components/responses/NotFound"}
    patch:
      tags: [tasks]
      operationId: updateTask
      summary: Change a task (owner or admin); params are checked against the pinned manifest.
      requestBody:
        required: true
        content:
          application/json:
            schema: {$ref: "#/components/schemas/TaskUpdate"}
      responses:
        "200":
          description: The updated task.
          content:
            application/json:
              schema: {$ref: "#/components/schemas/Task"}
        "400": {$ref: "#/components/responses/BadRequest"}
        "401": {$ref: "#/components/responses/Unauthorized"}
        "403": {$ref: "#/components/responses/Forbidden"}
        "404": {$ref: "#/components/responses/NotFound"}
        "409": {$ref: "#/components/responses/Conflict"}
        "413": {$ref: "#/components/responses/TooLarge"}
        "415": {$ref: "#/components/responses/UnsupportedMediaType"}
        "422": {$ref: "#/components/responses/Invalid"}
    delete:
      tags: [tasks]
      operationId: deleteTask
      summary: Delete a task (owner or admin); its jobs are unaffected.
      responses:
        "204": {description: Deleted.}
        "401": {$ref: "#/components/responses/Unauthorized"}
        "403": {$ref: "#/components/responses/Forbidden"}
        "404": {$ref: "#/components/responses/NotFound"}

  /api/v1/jobs:
    post:
      tags: [jobs]
      operationId: createJob
      summary: Start a job (status run); params are merged over the task's and checked.
      requestBody:
        required: true
        content:
          application/json:
            schema: {$ref: "#/components/schemas/JobCreate"}
      responses:
        "201":
          description: Created.
          headers: {Location: {$ref: "#/components/headers/Location"}}
          content:
            application/json:
              schema: {$ref: "#/components/schemas/Job"}
        "400": {$ref: "#/components/responses/BadRequest"}
        "401": {$ref: "#/components/responses/Unauthorized"}
        "403": {$ref: "#/components/responses/Forbidden"}
        "409": {$ref: "#/components/responses/Conflict"}
        "413": {$ref: "#/components/responses/TooLarge"}
        "415": {$ref: "#/components/responses/UnsupportedMediaType"}
        "422": {$ref: "#/components/responses/Invalid"}
    get:
      tags: [jobs]
      operationId: listJobs
      summary: List jobs.
      parameters:
        - {$ref: "#/components/parameters/Limit"}
        - {$ref: "#/components/parameters/After"}
        - {$ref: "#/components/parameters/NameFilter"}
        - {name: task, in: query, schema: {$ref: "#/components/schemas/ObjectId"}}
        - {name: image, in: query, schema: {$ref: "#/components/schemas/ObjectId"}}
        - {name: tool, in: query, schema: {$ref: "#/components/schemas/FilterString"}}
        - {name: status, in: query, schema: {$ref: "#/components/schemas/JobState"}}
        - {name: queue, in: query, schema: {$ref: "#/components/schemas/FilterString"}}
        - {$ref: "#/components/parameters/OwnerFilter"}
        - {$ref: "#/components/parameters/TagFilter"}
      responses:
        "200":
          description: A page.
          content:
            application/json:
              schema:
                allOf:
                  - {$ref: "#/components/schemas/Page"}
                  - properties:
                      items: {type: array, items: {$ref: "#/components/schemas/Job"}}
        "401": {$ref: "#/components/responses/Unauthorized"}
        "403": {$ref: "#/components/responses/Forbidden"}
        "422": {$ref: "#/components/responses/Invalid"}
  /api/v1/jobs/{id}:
    parameters:
      - {$ref: "#/components/parameters/Id"}
    get:
      tags: [jobs]
      operationId: getJob
      summary: One job with its progress and parts.
      responses:
        "200":
          description: The job.
          content:
            application/json:
              schema: {$ref: "#/components/schemas/Job"}
        "401": {$ref: "#/components/responses/Unauthorized"}
        "403": {$ref: "#/components/responses/Forbidden"}
        "404": {$ref: "#/components/responses/NotFound"}
    patch:
      tags: [jobs]
      operationId: updateJob
      summary: Request cancel, change priority, name or tags (owner or admin).
      requestBody:
        required: true
        content:
          application/json:
            schema: {$ref: "#/components/schemas/JobUpdate"}
      responses:
        "200":
          description: The updated job.
          content:
            application/json:
              schema: {$ref: "#/components/schemas/Job"}
        "400": {$ref: "#/components/responses/BadRequest"}
        "401": {$ref: "#/components/responses/Unauthorized"}
        "403": {$ref: "#/components/responses/Forbidden"}
        "404": {$ref: "#/components/responses/NotFound"}
        "409": {$ref: "#/components/responses/Conflict"}
        "413": {$ref: "#/components/responses/TooLarge"}
        "415": {$ref: "#/components/responses/UnsupportedMediaType"}
        "422": {$ref: "#/components/responses/Invalid"}

  /api/v1/results:
    get:
      tags: [results]
      operationId: listResults
      summary: Results, newest first.
      parameters:
        - {$ref: "#/components/parameters/Limit"}
        - {$ref: "#/components/parameters/After"}
        - {name: job, in: query, schema: {$ref: "#/components/schemas/ObjectId"}}
        - {name: type, in: query, schema: {$ref: "#/components/schemas/FilterString"}}
        - {name: tool, in: query, schema: {$ref: "#/components/schemas/FilterString"}}
        - {name: idx, in: query, schema: {type: integer, format: int64}}
        - {name: run, in: query, schema: {$ref: "#/components/schemas/FilterString"}}
        - {$ref: "#/components/parameters/TagFilter"}
      responses:
        "200":
          description: A page.
          content:
            application/json:
              schema:
                allOf:
                  - {$ref: "#/components/schemas/Page"}
                  - properties:
                      items: {type: array, items: {$ref: "#/components/schemas/Result"}}
        "401": {$ref: "#/components/responses/Unauthorized"}
        "403": {$ref: "#/components/responses/Forbidden"}
        "422": {$ref: "#/components/responses/Invalid"}
  /api/v1/results/{id}:
    parameters:
      - {$ref: "#/components/parameters/Id"}
    get:
      tags: [results]
      operationId: getResult
      summary: One result.
      responses:
        "200":
          description: The result.
          content:
            application/json:
              schema: {$ref: "#/components/schemas/Result"}
        "401": {$ref: "#/components/responses/Unauthorized"}
        "403": {$ref: "#/components/responses/Forbidden"}
        "404": {$ref: "#/components/responses/NotFound"}

  /api/v1/crashes:
    get:
      tags: [crashes]
      operationId: listCrashes
      summary: Crash buckets, newest first.
      parameters:
        - {$ref: "#/components/parameters/Limit"}
        - {$ref: "#/components/parameters/After"}
        - {name: job, in: query, schema: {$ref: "#/components/schemas/ObjectId"}}
        - {name: tool, in: query, schema: {$ref: "#/components/schemas/FilterString"}}
        - {name: bucket, in: query, schema: {$ref: "#/components/schemas/FilterString"}}
        - {$ref: "#/components/parameters/TagFilter"}
      responses:
        "200":
          description: A page.
          content:
            application/json:
              schema:
                allOf:
                  - {$ref: "#/components/schemas/Page"}
                  - properties:
                      items: {type: array, items: {$ref: "#/components/schemas/Crash"}}
        "401": {$ref: "#/components/responses/Unauthorized"}
        "403": {$ref: "#/components/responses/Forbidden"}
        "422": {$ref: "#/components/responses/Invalid"}
  /api/v1/crashes/{id}:
    parameters:
      - {$ref: "#/components/parameters/Id"}
    get:
      tags: [crashes]
      operationId: getCrash
      summary: One crash bucket with its kept samples.
      responses:
        "200":
          description: The crash bucket.
          content:
            application/json:
              schema: {$ref: "#/components/schemas/Crash"}
        "401": {$ref: "#/components/responses/Unauthorized"}
        "403": {$ref: "#/components/responses/Forbidden"}
        "404": {$ref: "#/components/responses/NotFound"}
  /api/v1/crashes/{id}/samples/{n}/file:
    parameters:
      - {$ref: "#/components/parameters/Id"}
      - {name: n, in: path, required: true, description: Sample index (0-based)., schema: {type: integer, minimum: 0}}
    get:
      tags: [crashes]
      operationId: getCrashSampleFile
      summary: The input file of sample n, byte-exact.
      responses:
        "200":
          description: The file.
          headers: {ETag: {$ref: "#/components/headers/ETag"}, X-Talus-SHA256: {$ref: "#/components/headers/Sha256"}}
          content:
            application/octet-stream:
              schema: {type: string, format: binary}
        "401": {$ref: "#/components/responses/Unauthorized"}
        "403": {$ref: "#/components/responses/Forbidden"}
        "404": {$ref: "#/components/responses/NotFound"}

  /api/v1/files:
    post:
      tags: [files]
      operationId: createFile
      summary: Store the request body as a file (GridFS bucket files).
      parameters:
        - {name: filename, in: query, required: true, schema: {type: string, minLength: 1, maxLength: 255, pattern: "^[^/]+$"}}
        - {name: tag, in: query, schema: {type: string, minLength: 1, maxLength: 64}}
      requestBody:
        required: true
        content:
          application/octet-stream:
            schema: {type: string, format: binary}
      responses:
        "201":
          description: Stored.
          headers: {Location: {$ref: "#/components/headers/Location"}}
          content:
            application/json:
              schema: {$ref: "#/components/schemas/StoredFile"}
        "401": {$ref: "#/components/responses/Unauthorized"}
        "403": {$ref: "#/components/responses/Forbidden"}
        "413": {$ref: "#/components/responses/TooLarge"}
        "422": {$ref: "#/components/responses/Invalid"}
    get:
      tags: [files]
      operationId: listFiles
      summary: Stored files, newest first.
      parameters:
        - {$ref: "#/components/parameters/Limit"}
        - {$ref: "#/components/parameters/After"}
        - {name: filename, in: query, schema: {$ref: "#/components/schemas/FilterString"}}
        - {name: sha256, in: query, schema: {$ref: "#/components/schemas/FilterString"}}
        - {$ref: "#/components/parameters/OwnerFilter"}
        - {name: job, in: query, schema: {$ref: "#/components/schemas/ObjectId"}}
        - {$ref: "#/components/parameters/TagFilter"}
      responses:
        "200":
          description: A page.
          content:
            application/json:
              schema:
                allOf:
                  - {$ref: "#/components/schemas/Page"}
                  - properties:
                      items: {type: array, items: {$ref: "#/components/schemas/StoredFile"}}
        "401": {$ref: "#/components/responses/Unauthorized"}
        "403": {$ref: "#/components/responses/Forbidden"}
        "422": {$ref: "#/components/responses/Invalid"}
  /api/v1/files/{id}:
    parameters:
      - {$ref: "#/components/parameters/Id"}
    get:
      tags: [files]
      operationId: getFile
      summary: A stored file's metadata.
      responses:
        "200":
          description: The file document.
          content:
            application/json:
              schema: {$ref: "#/components/schemas/StoredFile"}
        "401": {$ref: "#/components/responses/Unauthorized"}
        "403": {$ref: "#/components/responses/Forbidden"}
        "404": {$ref: "#/components/responses/NotFound"}
    delete:
      tags: [files]
      operationId: deleteFile
      summary: Delete a stored file (owner or admin; not while a fileset holds it).
      responses:
        "204": {description: Deleted.}
        "401": {$ref: "#/components/responses/Unauthorized"}
        "403": {$ref: "#/components/responses/Forbidden"}
        "404": {$ref: "#/components/responses/NotFound"}
        "409": {$ref: "#/components/responses/Conflict"}
  /api/v1/files/{id}/content:
    parameters:
      - {$ref: "#/components/parameters/Id"}
    get:
      tags: [files]
      operationId: getFileContent
      summary: A stored file's bytes, byte-exact.
      responses:
        "200":
          description: The file.
          headers: {ETag: {$ref: "#/components/headers/ETag"}, X-Talus-SHA256: {$ref: "#/components/headers/Sha256"}}
          content:
            application/octet-stream:
              schema: {type: string, format: binary}
        "401": {$ref: "#/components/responses/Unauthorized"}
        "403": {$ref: "#/components/responses/Forbidden"}
        "404": {$ref: "#/components/responses/NotFound"}

  /api/v1/filesets:
    post:
      tags: [filesets]
      operationId: createFileSet
      summary: Create a named group of stored files.
      requestBody:
        required: true
        content:
          application/json:
            schema: {$ref: "#/components/schemas/FileSetCreate"}
      responses:
        "201":
          description: Created.
          headers: {Location: {$ref: "#/components/headers/Location"}}
          content:
            application/json:
              schema: {$ref: "#/components/schemas/FileSet"}
        "400": {$ref: "#/components/responses/BadRequest"}
        "401": {$ref: "#/components/responses/Unauthorized"}
        "403": {$ref: "#/components/responses/Forbidden"}
        "409": {$ref: "#/components/responses/Conflict"}
        "413": {$ref: "#/components/responses/TooLarge"}
        "415": {$ref: "#/components/responses/UnsupportedMediaType"}
        "422": {$ref: "#/components/responses/Invalid"}
    get:
      tags: [filesets]
      operationId: listFileSets
      summary: List filesets.
      parameters:
        - {$ref: "#/components/parameters/Limit"}
        - {$ref: "#/components/parameters/After"}
        - {$ref: "#/components/parameters/NameFilter"}
        - {$ref: "#/components/parameters/OwnerFilter"}
        - {name: file, in: query, schema: {$ref: "#/components/schemas/ObjectId"}}
        - {$ref: "#/components/parameters/TagFilter"}
      responses:
        "200":
          description: A page.
          content:
            application/json:
              schema:
                allOf:
                  - {$ref: "#/components/schemas/Page"}
                  - properties:
                      items: {type: array, items: {$ref: "#/components/schemas/FileSet"}}
        "401": {$ref: "#/components/responses/Unauthorized"}
        "403": {$ref: "#/components/responses/Forbidden"}
        "422": {$ref: "#/components/responses/Invalid"}
  /api/v1/filesets/{id}:
    parameters:
      - {$ref: "#/components/parameters/Id"}
    get:
      tags: [filesets]
      operationId: getFileSet
      summary: One fileset.
      responses:
        "200":
          description: The fileset.
          content:
            application/json:
              schema: {$ref: "#/components/schemas/FileSet"}
        "401": {$ref: "#/components/responses/Unauthorized"}
        "403": {$ref: "#/components/responses/Forbidden"}
        "404": {$ref: "#/components/responses/NotFound"}
    patch:
      tags: [filesets]
      operationId: updateFileSet
      summary: Change a fileset (owner or admin); `files` replaces the list.
      requestBody:
        required: true
        content:
          application/json:
            schema: {$ref: "#/components/schemas/FileSetUpdate"}
      responses:
        "200":
          description: The updated fileset.
          content:
            application/json:
              schema: {$ref: "#/components/schemas/FileSet"}
        "400": {$ref: "#/components/responses/BadRequest"}
        "401": {$ref: "#/components/responses/Unauthorized"}
        "403": {$ref: "#/components/responses/Forbidden"}
        "404": {$ref: "#/components/responses/NotFound"}
        "409": {$ref: "#/components/responses/Conflict"}
        "413": {$ref: "#/components/responses/TooLarge"}
        "415": {$ref: "#/components/responses/UnsupportedMediaType"}
        "422": {$ref: "#/components/responses/Invalid"}
    delete:
      tags: [filesets]
      operationId: deleteFileSet
      summary: Delete a fileset (its files stay).
      responses:
        "204": {description: Deleted.}
        "401": {$ref: "#/components/responses/Unauthorized"}
        "403": {$ref: "#/components/responses/Forbidden"}
        "404": {$ref: "#/components/responses/NotFound"}

  /api/v1/slaves:
    get:
      tags: [slaves]
      operationId: listSlaves
      summary: Hypervisor hosts.
      parameters:
        - {$ref: "#/components/parameters/Limit"}
        - {$ref: "#/components/parameters/After"}
        - {name: hostname, in: query, schema: {$ref: "#/components/schemas/FilterString"}}
        - {name: uuid, in: query, schema: {$ref: "#/components/schemas/FilterString"}}
        - {name: status, in: query, schema: {type: string, enum: [online, drain, draining, offline]}}
        - {$ref: "#/components/parameters/TagFilter"}
      responses:
        "200":
          description: A page.
          content:
            application/json:
              schema:
                allOf:
                  - {$ref: "#/components/schemas/Page"}
                  - properties:
                      items: {type: array, items: {$ref: "#/components/schemas/Slave"}}
        "401": {$ref: "#/components/responses/Unauthorized"}
        "403": {$ref: "#/components/responses/Forbidden"}
        "422": {$ref: "#/components/responses/Invalid"}
  /api/v1/slaves/{id}:
    parameters:
      - {$ref: "#/components/parameters/Id"}
    get:
      tags: [slaves]
      operationId: getSlave
      summary: One slave.
      responses:
        "200":
          description: The slave.
          content:
            application/json:
              schema: {$ref: "#/components/schemas/Slave"}
        "401": {$ref: "#/components/responses/Unauthorized"}
        "403": {$ref: "#/components/responses/Forbidden"}
        "404": {$ref: "#/components/responses/NotFound"}
    patch:
      tags: [slaves]
      operationId: updateSlave
      summary: Request a drain or change tags (admin).
      requestBody:
        required: true
        content:
          application/json:
            schema: {$ref: "#/components/schemas/SlaveUpdate"}
      responses:
        "200":
          description: The updated slave.
          content:
            application/json:
              schema: {$ref: "#/components/schemas/Slave"}
        "400": {$ref: "#/components/responses/BadRequest"}
        "401": {$ref: "#/components/responses/Unauthorized"}
        "403": {$ref: "#/components/responses/Forbidden"}
        "404": {$ref: "#/components/responses/NotFound"}
        "409": {$ref: "#/components/responses/Conflict"}
        "413": {$ref: "#/components/responses/TooLarge"}
        "415": {$ref: "#/components/responses/UnsupportedMediaType"}
        "422": {$ref: "#/components/responses/Invalid"}

  /api/v1/users:
    post:
      tags: [users]
      operationId: createUser
      summary: Create a user (admin).
      requestBody:
        required: true
        content:
          application/json:
            schema: {$ref: "#/components/schemas/UserCreate"}
      responses:
        "201":
          description: Created.
          headers: {Location: {$ref: "#/components/headers/Location"}}
          content:
            application/json:
              schema: {$ref: "#/components/schemas/User"}
        "400": {$ref: "#/components/responses/BadRequest"}
        "401": {$ref: "#/components/responses/Unauthorized"}
        "403": {$ref: "#/components/responses/Forbidden"}
        "409": {$ref: "#/components/responses/Conflict"}
        "413": {$ref: "#/components/responses/TooLarge"}
        "415": {$ref: "#/components/responses/UnsupportedMediaType"}
        "422": {$ref: "#/components/responses/Invalid"}
    get:
      tags: [users]
      operationId: listUsers
      summary: List users (admin).
      parameters:
        - {$ref: "#/components/parameters/Limit"}
        - {$ref: "#/components/parameters/After"}
        - {$ref: "#/components/parameters/NameFilter"}
        - {name: role, in: query, schema: {$ref: "#/components/schemas/Role"}}
        - {name: disabled, in: query, schema: {type: string, enum: ["true", "false"]}}
        - {$ref: "#/components/parameters/TagFilter"}
      responses:
        "200":
          description: A page.
          content:
            application/json:
              schema:
                allOf:
                  - {$ref: "#/components/schemas/Page"}
                  - properties:
                      items: {type: array, items: {$ref: "#/components/schemas/User"}}
        "401": {$ref: "#/components/responses/Unauthorized"}
        "403": {$ref: "#/components/responses/Forbidden"}
        "422": {$ref: "#/components/responses/Invalid"}
  /api/v1/users/me:
    get:
      tags: [users]
      operationId: getMe
      summary: The caller (user and admin tokens).
      responses:
        "200":
          description: You.
          content:
            application/json:
              schema: {$ref: "#/components/schemas/User"}
        "401": {$ref: "#/components/responses/Unauthorized"}
        "403": {$ref: "#/components/responses/Forbidden"}
        "404": {$ref: "#/components/responses/NotFound"}
  /api/v1/users/{id}:
    parameters:
      - {$ref: "#/components/parameters/Id"}
    get:
      tags: [users]
      operationId: getUser
      summary: One user (admin).
      responses:
        "200":
          description: The user.
          content:
            application/json:
              schema: {$ref: "#/components/schemas/User"}
        "401": {$ref: "#/components/responses/Unauthorized"}
        "403": {$ref: "#/components/responses/Forbidden"}
        "404": {$ref: "#/components/responses/NotFound"}
    patch:
      tags: [users]
      operationId: updateUser
      summary: Change a user's role, disable or enable them (admin; never the last admin).
      requestBody:
        required: true
        content:
          application/json:
            schema: {$ref: "#/components/schemas/UserUpdate"}
      responses:
        "200":
          description: The updated user.
          content:
            application/json:
              schema: {$ref: "#/components/schemas/User"}
        "400": {$ref: "#/components/responses/BadRequest"}
        "401": {$ref: "#/components/responses/Unauthorized"}
        "403": {$ref: "#/components/responses/Forbidden"}
        "404": {$ref: "#/components/responses/NotFound"}
        "409": {$ref: "#/components/responses/Conflict"}
        "413": {$ref: "#/components/responses/TooLarge"}
        "415": {$ref: "#/components/responses/UnsupportedMediaType"}
        "422": {$ref: "#/components/responses/Invalid"}
    delete:
      tags: [users]
      operationId: deleteUser
      summary: Delete a user and their tokens (admin; never the last admin).
      responses:
        "204": {description: Deleted.}
        "401": {$ref: "#/components/responses/Unauthorized"}
        "403": {$ref: "#/components/responses/Forbidden"}
        "404": {$ref: "#/components/responses/NotFound"}
        "409": {$ref: "#/components/responses/Conflict"}

  /api/v1/tokens:
    post:
      tags: [tokens]
      operationId: createToken
      summary: Create a token (yours, or another user's as admin); the secret is in this answer only.
      requestBody:
        required: true
        content:
          application/json:
            schema: {$ref: "#/components/schemas/TokenCreate"}
      responses:
        "201":
          description: Created; `token` holds the secret.
          headers: {Location: {$ref: "#/components/headers/Location"}}
          content:
            application/json:
              schema: {$ref: "#/components/schemas/Token"}
        "400": {$ref: "#/components/responses/BadRequest"}
        "401": {$ref: "#/components/responses/Unauthorized"}
        "403": {$ref: "#/components/responses/Forbidden"}
        "413": {$ref: "#/components/responses/TooLarge"}
        "415": {$ref: "#/components/responses/UnsupportedMediaType"}
        "422": {$ref: "#/components/responses/Invalid"}
    get:
      tags: [tokens]
      operationId: listTokens
      summary: Your tokens (admins see all); prefixes only, never secrets.
      parameters:
        - {$ref: "#/components/parameters/Limit"}
        - {$ref: "#/components/parameters/After"}
        - {name: user, in: query, schema: {$ref: "#/components/schemas/OwnerFilter"}}
        - {$ref: "#/components/parameters/NameFilter"}
      responses:
        "200":
          description: A page.
          content:
            application/json:
              schema:
                allOf:
                  - {$ref: "#/components/schemas/Page"}
                  - properties:
                      items: {type: array, items: {$ref: "#/components/schemas/Token"}}
        "401": {$ref: "#/components/responses/Unauthorized"}
        "403": {$ref: "#/components/responses/Forbidden"}
        "422": {$ref: "#/components/responses/Invalid"}
  /api/v1/tokens/{id}:
    parameters:
      - {$ref: "#/components/parameters/Id"}
    delete:
      tags: [tokens]
      operationId: revokeToken
      summary: Revoke a token at once (yours; admins any).
      responses:
        "204": {description: Revoked.}
        "401": {$ref: "#/components/responses/Unauthorized"}
        "403": {$ref: "#/components/responses/Forbidden"}
        "404": {$ref: "#/components/responses/NotFound"}

components:
  securitySchemes:
    bearer:
      type: http
      scheme: bearer
      description: "`talus_` + 43 characters; create with `talus-api bootstrap-admin` or `talus token create`."
  headers:
    Location:
      description: Path of the created resource.
      schema: {type: string}
    ContentLength: {schema: {type: integer}}
    ContentRange: {description: "bytes FIRST-LAST/SIZE", schema: {type: string}}
    ETag: {description: The quoted sha256 of the file., schema: {type: string}}
    Sha256: {description: Lowercase hex SHA-256 of the whole file., schema: {type: string}}
    AcceptRanges: {schema: {type: string, enum: [bytes]}}
  parameters:
    Id:
      name: id
      in: path
      required: true
      description: The resource id (24 hex digits).
      schema: {$ref: "#/components/schemas/ObjectId"}
    Limit:
      name: limit
      in: query
      description: Page size (default 50).
      schema: {type: integer, minimum: 1, maximum: 500}
    After:
      name: after
      in: query
      description: The `next` of the previous page.
      schema: {$ref: "#/components/schemas/ObjectId"}
    NameFilter:
      name: name
      in: query
      schema: {$ref: "#/components/schemas/FilterString"}
    OwnerFilter:
      name: owner
      in: query
      description: An owner's id, or `me`.
      schema: {$ref: "#/components/schemas/OwnerFilter"}
    TagFilter:
      name: tag
      in: query
      schema: {$ref: "#/components/schemas/FilterString"}
  responses:
    BadRequest:
      description: Malformed request (not JSON, bad header).
      content:
        application/problem+json:
          schema: {$ref: "#/components/schemas/Problem"}
    Unauthorized:
      description: No token, or an unknown, expired or revoked one.
      headers:
        WWW-Authenticate: {schema: {type: string}}
      content:
        application/problem+json:
          schema: {$ref: "#/components/schemas/Problem"}
    Forbidden:
      description: The token's role or ownership does not allow this.
      content:
        application/problem+json:
          schema: {$ref: "#/components/schemas/Problem"}
    NotFound:
      description: No such resource.
      content:
        application/problem+json:
          schema: {$ref: "#/components/schemas/Problem"}
    Conflict:
      description: Not possible in the resource's current state (or a duplicate name).
      content:
        application/problem+json:
          schema: {$ref: "#/components/schemas/Problem"}
    TooLarge:
      description: Body or announced size over the configured limit.
      content:
        application/problem+json:
          schema: {$ref: "#/components/schemas/Problem"}
    UnsupportedMediaType:
      description: The body must be application/json.
      content:
        application/problem+json:
          schema: {$ref: "#/components/schemas/Problem"}
    Invalid:
      description: The body or query does not fit the resource; `errors` lists each problem.
      content:
        application/problem+json:
          schema: {$ref: "#/components/schemas/Problem"}
    RangeNotSatisfiable:
      description: The range lies outside the file.
      headers:
        Content-Range: {schema: {type: string}}
      content:
        application/problem+json:
          schema: {$ref: "#/components/schemas/Problem"}
  schemas:
    ObjectId: {type: string, pattern: "^[0-9a-f]{24}$"}
    OwnerFilter: {type: string, pattern: "^([0-9a-f]{24}|me)$"}
    FilterString: {type: string, minLength: 1, maxLength: 256}
    Date: {type: string, format: date-time}
    Name:
      type: string
      minLength: 1
      maxLength: 100
      pattern: "^[A-Za-z0-9][A-Za-z0-9._@+-]*$"
      description: Letters, digits and . _ - @ +, starting with a letter or digit; never 24 hex digits.
    Tags:
      type: array
      maxItems: 32
      items: {type: string, minLength: 1, maxLength: 64}
    Problem:
      type: object
      required: [type, title, status, detail]
      properties:
        type: {type: string}
        title: {type: string}
        status: {type: integer}
        detail: {type: string}
        instance: {type: string}
        errors:
          type: array
          items:
            type: object
            required: [field, problem]
            properties:
              field: {type: string}
              problem: {type: string}
    Page:
      type: object
      required: [items, next]
      properties:
        items: {type: array}
        next: {type: string, nullable: true, description: "`after` of the next page; null on the last page."}
    Health:
      type: object
      required: [ok, checks]
      properties:
        ok: {type: boolean}
        checks: {type: object, additionalProperties: {type: string}}
    Document:
      type: object
      required: [_id, schema, created, updated, tags]
      properties:
        _id: {$ref: "#/components/schemas/ObjectId"}
        schema: {type: integer}
        created: {$ref: "#/components/schemas/Date"}
        updated: {$ref: "#/components/schemas/Date"}
        tags: {type: array, items: {type: string}}
    VMShape:
      type: object
      properties:
        cpus: {type: integer, minimum: 1, maximum: 64}
        memory_mb: {type: integer, minimum: 64, maximum: 262144}
        timeout_s: {type: integer, minimum: 10, maximum: 604800}
      additionalProperties: false
    Credentials:
      type: object
      required: [username, password]
      properties:
        username: {type: string, minLength: 1, maxLength: 128}
        password: {type: string, maxLength: 256}
      additionalProperties: false
    Status:
      type: object
      required: [name, since]
      properties:
        name: {type: string}
        reason: {type: string}
        since: {$ref: "#/components/schemas/Date"}
    OS:
      allOf:
        - {$ref: "#/components/schemas/Document"}
        - type: object
          required: [name, family, arch]
          properties:
            name: {type: string}
            family: {type: string, enum: [linux, windows, other]}
            version: {type: string}
            arch: {type: string}
    OSCreate:
      type: object
      required: [name, family]
      additionalProperties: false
      properties:
        name: {$ref: "#/components/schemas/Name"}
        family: {type: string, enum: [linux, windows, other]}
        version: {type: string, minLength: 1, maxLength: 64}
        arch: {type: string, minLength: 1, maxLength: 32}
        tags: {$ref: "#/components/schemas/Tags"}
    OSUpdate:
      type: object
      additionalProperties: false
      properties:
        family: {type: string, enum: [linux, windows, other]}
        version: {type: string, minLength: 1, maxLength: 64}
        arch: {type: string, minLength: 1, maxLength: 32}
        tags: {$ref: "#/components/schemas/Tags"}
    ImageState:
      type: string
      enum: [import, importing, configure, configuring, create, creating, delete, deleting, ready, error]
    Image:
      allOf:
        - {$ref: "#/components/schemas/Document"}
        - type: object
          required: [name, os, status]
          properties:
            name: {type: string}
            os: {$ref: "#/components/schemas/ObjectId"}
            base: {$ref: "#/components/schemas/ObjectId"}
            description: {type: string}
            owner: {$ref: "#/components/schemas/ObjectId"}
            file:
              type: object
              required: [path, format]
              properties:
                path: {type: string}
                format: {type: string}
                sha256: {type: string}
                size: {type: integer}
                virtual_size: {type: integer}
            credentials:
              type: object
              properties:
                username: {type: string}
                password: {type: string, description: Always masked.}
            request:
              type: object
              required: [interactive]
              properties:
                upload: {$ref: "#/components/schemas/ObjectId"}
                interactive: {type: boolean}
                session_seconds: {type: integer}
            status:
              type: object
              required: [name, since]
              properties:
                name: {$ref: "#/components/schemas/ImageState"}
                reason: {type: string}
                since: {$ref: "#/components/schemas/Date"}
                deadline: {$ref: "#/components/schemas/Date"}
                domain: {type: string}
                vnc:
                  type: object
                  required: [host, port, password]
                  properties:
                    host: {type: string}
                    port: {type: integer}
                    password: {type: string, description: Masked unless you own the image or are an admin.}
                    expires: {$ref: "#/components/schemas/Date"}
            vm: {$ref: "#/components/schemas/VMShapeOut"}
    VMShapeOut:
      type: object
      required: [cpus, memory_mb, timeout_s]
      properties:
        cpus: {type: integer}
        memory_mb: {type: integer}
        timeout_s: {type: integer}
    ImageCreate:
      type: object
      required: [name]
      additionalProperties: false
      properties:
        name: {$ref: "#/components/schemas/Name"}
        os: {$ref: "#/components/schemas/ObjectId"}
        upload: {$ref: "#/components/schemas/ObjectId"}
        base: {$ref: "#/components/schemas/ObjectId"}
        interactive: {type: boolean, description: "Default: true for an import, false for a derived image."}
        session_seconds: {type: integer, minimum: 60, maximum: 604800}
        description: {type: string, minLength: 1, maxLength: 4096}
        tags: {$ref: "#/components/schemas/Tags"}
        vm: {$ref: "#/components/schemas/VMShape"}
        credentials: {$ref: "#/components/schemas/Credentials"}
    ImageUpdate:
      type: object
      additionalProperties: false
      properties:
        name: {$ref: "#/components/schemas/Name"}
        description: {type: string, maxLength: 4096}
        tags: {$ref: "#/components/schemas/Tags"}
        credentials: {$ref: "#/components/schemas/Credentials"}
        vm: {$ref: "#/components/schemas/VMShape"}
        status: {type: string, enum: [configure, delete], description: "A request; import and create are given at creation."}
        interactive: {type: boolean}
        session_seconds: {type: integer, minimum: 60, maximum: 604800}
    Upload:
      allOf:
        - {$ref: "#/components/schemas/Document"}
        - type: object
          required: [filename, path, size, complete, expires]
          properties:
            filename: {type: string}
            path: {type: string}
            size: {type: integer, description: Bytes received so far.}
            expected_size: {type: integer}
            sha256: {type: string}
            complete: {type: boolean}
            owner: {$ref: "#/components/schemas/ObjectId"}
            expires: {$ref: "#/components/schemas/Date"}
    UploadCreate:
      type: object
      required: [filename, size]
      additionalProperties: false
      properties:
        filename: {type: string, minLength: 1, maxLength: 255, pattern: "^[^/]+$"}
        size: {type: integer, format: int64, minimum: 0}
        tags: {$ref: "#/components/schemas/Tags"}
    ToolParam:
      type: object
      required: [name, type]
      properties:
        name: {type: string}
        type: {type: string}
        description: {type: string}
        default: {}
        required: {type: boolean}
    Code:
      allOf:
        - {$ref: "#/components/schemas/Document"}
        - type: object
          required: [name, kind, commit, committed, manifest, path]
          properties:
            name: {type: string}
            kind: {type: string, enum: [tool, component]}
            commit: {type: string}
            committed: {$ref: "#/components/schemas/Date"}
            path: {type: string}
            manifest:
              type: object
              required: [name, description, params, components]
              properties:
                name: {type: string}
                description: {type: string}
                entry: {type: string}
                params: {type: array, items: {$ref: "#/components/schemas/ToolParam"}}
                components: {type: array, items: {type: string}}
                timeout: {type: integer}
                resources: {type: object}
    CodeHead:
      type: object
      required: [_id, branch, commit, committed, tools, components, updated]
      properties:
        _id: {type: string}
        branch: {type: string}
        commit: {type: string}
        committed: {$ref: "#/components/schemas/Date"}
        tools: {type: array, items: {type: string}}
        components: {type: array, items: {type: string}}
        updated: {$ref: "#/components/schemas/Date"}
    Task:
      allOf:
        - {$ref: "#/components/schemas/Document"}
        - type: object
          required: [name, tool, tool_commit, image, params, limit, vm, network]
          properties:
            name: {type: string}
            tool: {type: string}
            tool_commit: {type: string}
            image: {$ref: "#/components/schemas/ObjectId"}
            params: {type: object}
            limit: {type: integer}
            vm: {$ref: "#/components/schemas/VMShapeOut"}
            network: {type: string, enum: [none, user, isolated]}
            owner: {$ref: "#/components/schemas/ObjectId"}
    TaskCreate:
      type: object
      required: [name, tool, image]
      additionalProperties: false
      properties:
        name: {$ref: "#/components/schemas/Name"}
        tool: {type: string, minLength: 1, maxLength: 64}
        tool_commit: {type: string, pattern: "^[0-9a-f]{40}$"}
        image: {$ref: "#/components/schemas/ObjectId"}
        params: {type: object, description: "Tool parameters; keys may not start with $ or contain dots."}
        limit: {type: integer, minimum: -1, maximum: 1000000000, not: {enum: [0]}}
        network: {type: string, enum: [none, user, isolated]}
        vm: {$ref: "#/components/schemas/VMShape"}
        tags: {$ref: "#/components/schemas/Tags"}
    TaskUpdate:
      type: object
      additionalProperties: false
      properties:
        name: {$ref: "#/components/schemas/Name"}
        tool_commit: {type: string, pattern: "^[0-9a-f]{40}$"}
        image: {$ref: "#/components/schemas/ObjectId"}
        params: {type: object}
        limit: {type: integer, minimum: -1, maximum: 1000000000, not: {enum: [0]}}
        network: {type: string, enum: [none, user, isolated]}
        vm: {$ref: "#/components/schemas/VMShape"}
        tags: {$ref: "#/components/schemas/Tags"}
    JobState:
      type: string
      enum: [run, running, finished, cancel, cancelling, cancelled, failed]
    Job:
      allOf:
        - {$ref: "#/components/schemas/Document"}
        - type: object
          required: [name, task, image, tool, tool_commit, params, priority, limit, progress, parts, errors, vm, network, queue, debug, status]
          properties:
            name: {type: string}
            task: {$ref: "#/components/schemas/ObjectId"}
            image: {$ref: "#/components/schemas/ObjectId"}
            tool: {type: string}
            tool_commit: {type: string}
            params: {type: object}
            priority: {type: integer}
            limit: {type: integer}
            progress: {type: integer}
            parts:
              type: object
              required: [queued, running, done, failed]
              properties:
                queued: {type: integer}
                running: {type: integer}
                done: {type: integer}
                failed: {type: integer}
            errors:
              type: array
              items:
                type: object
                required: [reason, at]
                properties:
                  idx: {type: integer}
                  attempt: {type: integer}
                  slave: {type: string}
                  reason: {type: string}
                  at: {$ref: "#/components/schemas/Date"}
            vm: {$ref: "#/components/schemas/VMShapeOut"}
            network: {type: string}
            queue: {type: string}
            debug: {type: boolean}
            status:
              type: object
              required: [name, since]
              properties:
                name: {$ref: "#/components/schemas/JobState"}
                reason: {type: string}
                since: {$ref: "#/components/schemas/Date"}
            owner: {$ref: "#/components/schemas/ObjectId"}
    JobCreate:
      type: object
      required: [task]
      additionalProperties: false
      properties:
        task: {$ref: "#/components/schemas/ObjectId"}
        name: {$ref: "#/components/schemas/Name"}
        image: {$ref: "#/components/schemas/ObjectId"}
        params: {type: object}
        priority: {type: integer, minimum: 1, maximum: 100}
        limit: {type: integer, minimum: -1, maximum: 1000000000, not: {enum: [0]}}
        network: {type: string, enum: [none, user, isolated]}
        queue: {type: string, minLength: 1, maxLength: 64, pattern: "^[A-Za-z][A-Za-z0-9_-]*$"}
        debug: {type: boolean}
        vm: {$ref: "#/components/schemas/VMShape"}
        tags: {$ref: "#/components/schemas/Tags"}
    JobUpdate:
      type: object
      additionalProperties: false
      properties:
        status: {type: string, enum: [cancel], description: "The only request on an existing job."}
        priority: {type: integer, minimum: 1, maximum: 100}
        name: {$ref: "#/components/schemas/Name"}
        tags: {$ref: "#/components/schemas/Tags"}
    FileRef:
      type: object
      required: [id, name, size, sha256]
      properties:
        id: {$ref: "#/components/schemas/ObjectId"}
        name: {type: string}
        size: {type: integer}
        sha256: {type: string}
    Result:
      allOf:
        - {$ref: "#/components/schemas/Document"}
        - type: object
          required: [job, idx, run, tool, type, data, files]
          properties:
            job: {$ref: "#/components/schemas/ObjectId"}
            idx: {type: integer}
            run: {type: string}
            tool: {type: string}
            type: {type: string}
            data: {type: object}
            files: {type: array, items: {$ref: "#/components/schemas/FileRef"}}
    Crash:
      allOf:
        - {$ref: "#/components/schemas/Document"}
        - type: object
          required: [job, tool, bucket, first_seen, last_seen, count, samples]
          properties:
            job: {$ref: "#/components/schemas/ObjectId"}
            tool: {type: string}
            bucket: {type: string}
            first_seen: {$ref: "#/components/schemas/Date"}
            last_seen: {$ref: "#/components/schemas/Date"}
            count: {type: integer}
            samples:
              type: array
              items:
                type: object
                required: [job, idx, run, at, data]
                properties:
                  job: {$ref: "#/components/schemas/ObjectId"}
                  idx: {type: integer}
                  run: {type: string}
                  at: {$ref: "#/components/schemas/Date"}
                  data: {type: object}
                  file: {$ref: "#/components/schemas/FileRef"}
    StoredFile:
      type: object
      required: [_id, length, chunkSize, uploadDate, filename, metadata]
      properties:
        _id: {$ref: "#/components/schemas/ObjectId"}
        length: {type: integer}
        chunkSize: {type: integer}
        uploadDate: {$ref: "#/components/schemas/Date"}
        filename: {type: string}
        metadata:
          type: object
          required: [sha256, tags]
          properties:
            sha256: {type: string}
            owner: {$ref: "#/components/schemas/ObjectId"}
            job: {$ref: "#/components/schemas/ObjectId"}
            content_type: {type: string}
            tags: {type: array, items: {type: string}}
    FileSet:
      allOf:
        - {$ref: "#/components/schemas/Document"}
        - type: object
          required: [name, files]
          properties:
            name: {type: string}
            description: {type: string}
            files: {type: array, items: {$ref: "#/components/schemas/FileRef"}}
            owner: {$ref: "#/components/schemas/ObjectId"}
    FileSetCreate:
      type: object
      required: [name]
      additionalProperties: false
      properties:
        name: {$ref: "#/components/schemas/Name"}
        description: {type: string, minLength: 1, maxLength: 4096}
        files: {type: array, items: {$ref: "#/components/schemas/ObjectId"}}
        tags: {$ref: "#/components/schemas/Tags"}
    FileSetUpdate:
      type: object
      additionalProperties: false
      properties:
        name: {$ref: "#/components/schemas/Name"}
        description: {type: string, maxLength: 4096}
        files: {type: array, items: {$ref: "#/components/schemas/ObjectId"}}
        tags: {$ref: "#/components/schemas/Tags"}
    Slave:
      allOf:
        - {$ref: "#/components/schemas/Document"}
        - type: object
          required: [uuid, hostname, capacity, running, last_heartbeat, version, status]
          properties:
            uuid: {type: string}
            hostname: {type: string}
            address: {type: string}
            capacity:
              type: object
              required: [vms, memory_mb]
              properties:
                vms: {type: integer}
                memory_mb: {type: integer}
            running:
              type: array
              items:
                type: object
                required: [job, idx, attempt, run, since]
                properties:
                  job: {$ref: "#/components/schemas/ObjectId"}
                  idx: {type: integer}
                  attempt: {type: integer}
                  run: {type: string}
                  since: {$ref: "#/components/schemas/Date"}
            last_heartbeat: {$ref: "#/components/schemas/Date"}
            version: {type: string}
            status:
              type: object
              required: [name, since]
              properties:
                name: {type: string, enum: [online, drain, draining, offline]}
                reason: {type: string}
                since: {$ref: "#/components/schemas/Date"}
    SlaveUpdate:
      type: object
      additionalProperties: false
      properties:
        status: {type: string, enum: [drain]}
        tags: {$ref: "#/components/schemas/Tags"}
    Role: {type: string, enum: [slave, user, admin]}
    User:
      allOf:
        - {$ref: "#/components/schemas/Document"}
        - type: object
          required: [name, role, disabled]
          properties:
            name: {type: string}
            role: {$ref: "#/components/schemas/Role"}
            disabled: {type: boolean}
    UserCreate:
      type: object
      required: [name, role]
      additionalProperties: false
      properties:
        name: {$ref: "#/components/schemas/Name"}
        role: {$ref: "#/components/schemas/Role"}
        tags: {$ref: "#/components/schemas/Tags"}
    UserUpdate:
      type: object
      additionalProperties: false
      properties:
        role: {$ref: "#/components/schemas/Role"}
        disabled: {type: boolean}
        tags: {$ref: "#/components/schemas/Tags"}
    Token:
      type: object
      required: [_id, user, name, prefix, created, tags]
      properties:
        _id: {$ref: "#/components/schemas/ObjectId"}
        user: {$ref: "#/components/schemas/ObjectId"}
        name: {type: string}
        prefix: {type: string}
        expires: {$ref: "#/components/schemas/Date"}
        last_used: {$ref: "#/components/schemas/Date"}
        created: {$ref: "#/components/schemas/Date"}
        tags: {type: array, items: {type: string}}
        token: {type: string, description: The secret; only in the answer to the create request.}
    TokenCreate:
      type: object
      required: [name]
      additionalProperties: false
      properties:
        name: {$ref: "#/components/schemas/Name"}
        user: {$ref: "#/components/schemas/ObjectId"}
        expires_in_days: {type: integer, minimum: 1, maximum: 3650}
        tags: {$ref: "#/components/schemas/Tags"}
"""#
}
