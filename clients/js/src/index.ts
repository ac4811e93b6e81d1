// The commissions client: REST calls (CommissionsApi), the live stream
// (CommissionsClient) and the wire types. The React hook is in
// `@commissions/client/react`, so using the client needs no React.

export { ApiError, CommissionsApi } from './rest.js';
export type { ApiOptions, EventPage, PageQuery, PayoutQuery } from './rest.js';
export { CommissionsClient, decodeTokenPayload } from './stream.js';
export type { Backoff, StreamEvents, StreamOptions } from './stream.js';
export type * from './types.js';
