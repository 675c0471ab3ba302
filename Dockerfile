# syntax=docker/dockerfile:1
# The routestate operator image: a static (musl) binary on distroless/static, running as the
# non-root user 65532. `make image` builds it as routestate:dev.

FROM rust:1.95-alpine AS build
# musl-dev: the C runtime ring links against; Rust's musl target links statically by default.
RUN apk add --no-cache musl-dev
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin routestate \
 && cp target/release/routestate /routestate

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /routestate /routestate
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/routestate"]
CMD ["run"]
