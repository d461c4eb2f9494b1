# The middlebox server image: build with the full toolchain, run on a slim Node 24 LTS as non-root.
FROM node:24-bookworm-slim AS build
WORKDIR /src
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY tsconfig.json ./
COPY src ./src
COPY test ./test
RUN npx tsc -p tsconfig.json && npm prune --omit=dev

FROM node:24-bookworm-slim
ENV NODE_ENV=production \
    MIDDLEBOX_LISTEN=0.0.0.0:9001
WORKDIR /app
COPY --from=build /src/package.json ./
COPY --from=build /src/node_modules ./node_modules
COPY --from=build /src/dist/src ./dist/src
COPY bin ./bin
# The image's built-in unprivileged user.
USER node
EXPOSE 9001
ENTRYPOINT ["node", "/app/dist/src/cli/main.js"]
CMD ["serve"]
